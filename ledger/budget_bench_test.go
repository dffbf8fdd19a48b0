package ledger

import (
	"context"
	"strconv"
	"testing"
)

// BenchmarkBudgetReserveSettle is one request's budget work in the store:
// a reservation against one budget, then its settlement.
//
//	go test -run '^$' -bench BenchmarkBudgetReserveSettle ./ledger/
func BenchmarkBudgetReserveSettle(b *testing.B) {
	for _, driver := range []string{DriverSQLite, DriverPostgres} {
		b.Run(driver, func(b *testing.B) {
			bu := openInstances(b, driver, 1)[0].Budgets(BudgetOptions{})
			big := Budget{Name: "bench", Per: PerGlobal, Period: PeriodTotal, LimitMSat: 1 << 50}
			ctx := context.Background()
			i := 0
			for b.Loop() {
				i++
				adm, err := bu.Reserve(ctx, Reservation{ID: strconv.Itoa(i), AmountMSat: 1000, Charges: []Charge{{Budget: big}}})
				if err != nil || !adm.Admitted {
					b.Fatal(adm, err)
				}
				if err := bu.Settle(ctx, adm, 500); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
