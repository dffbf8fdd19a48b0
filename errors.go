package arbstr

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// apiError is an error arbstr answers itself, in the shape of the request's
// API (protocol.errorBody): OpenAI's {"error":{"message","type","param",
// "code"}} or Anthropic's {"type":"error","error":{"type","message"}}.
type apiError struct {
	status     int
	message    string
	errType    string
	param      string // "" is written as null
	code       string
	retryAfter time.Duration // > 0 adds Retry-After
	noRetry    bool          // adds x-should-retry: false
	attempts   []attemptRecord
}

func (e *apiError) Error() string { return e.message }

// write sends the error to the client with its status and headers, in
// proto's shape (nil: OpenAI's).
func (e *apiError) write(w http.ResponseWriter, proto protocol) {
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	if e.retryAfter > 0 {
		hdr.Set("Retry-After", strconv.Itoa(int(math.Ceil(e.retryAfter.Seconds()))))
	}
	if e.noRetry {
		hdr.Set("x-should-retry", "false")
	}
	w.WriteHeader(e.status)
	if proto == nil {
		proto = protocols[protoChat]
	}
	_, _ = w.Write(proto.errorBody(e))
}

// attemptJSON is one failed attempt as arbstr's error answers list them.
type attemptJSON struct {
	Provider string `json:"provider"`
	Status   int    `json:"status,omitempty"`
	Error    string `json:"error"`
}

func (e *apiError) attemptsJSON() []attemptJSON {
	var out []attemptJSON
	for _, a := range e.attempts {
		out = append(out, attemptJSON{a.provider, a.status, a.class.String()})
	}
	return out
}

// openAIBody is the error in OpenAI's shape.
func (e *apiError) openAIBody() []byte {
	var payload struct {
		Error struct {
			Message  string        `json:"message"`
			Type     string        `json:"type"`
			Param    *string       `json:"param"`
			Code     string        `json:"code"`
			Attempts []attemptJSON `json:"attempts,omitempty"`
		} `json:"error"`
	}
	payload.Error.Message = e.message
	payload.Error.Type = e.errType
	payload.Error.Code = e.code
	if e.param != "" {
		payload.Error.Param = &e.param
	}
	payload.Error.Attempts = e.attemptsJSON()
	b, _ := json.Marshal(payload)
	return b
}

func errInvalidRequest(param, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, message: fmt.Sprintf(format, args...),
		errType: "invalid_request_error", param: param, code: "invalid_request"}
}

func errBodyTooLarge(limit int64) *apiError {
	return &apiError{status: http.StatusRequestEntityTooLarge,
		message: fmt.Sprintf("request body is larger than the %d bytes this gateway accepts (max_body)", limit),
		errType: "invalid_request_error", code: "request_too_large"}
}

func errBodyTimeout(timeout time.Duration) *apiError {
	return &apiError{status: http.StatusRequestTimeout,
		message: fmt.Sprintf("the request body did not arrive within the %s deadline (timeout)", timeout),
		errType: "invalid_request_error", code: "request_timeout"}
}

func errMethodNotAllowed(method, allow string) *apiError {
	return &apiError{status: http.StatusMethodNotAllowed,
		message: fmt.Sprintf("method %s is not allowed here; use %s", method, allow),
		errType: "invalid_request_error", code: "method_not_allowed"}
}

func errModelNotFound(model string, api providerAPI) *apiError {
	msg := fmt.Sprintf("the model %q is not served by any configured provider; GET /models lists the models available", model)
	if api != apiOpenAI {
		msg = fmt.Sprintf("the model %q is not served by any provider with `api %s`, which this API needs; GET /models lists the models of every provider", model, api)
	}
	return &apiError{status: http.StatusNotFound, message: msg,
		errType: "invalid_request_error", param: "model", code: "model_not_found"}
}

func errUnknownPolicy(name string) *apiError {
	return &apiError{status: http.StatusBadRequest,
		message: fmt.Sprintf("the policy %q named by the %s header is not configured", name, policyHeader),
		errType: "invalid_request_error", code: "unknown_policy"}
}

func errPolicyForbidsModel(name, model string) *apiError {
	return &apiError{status: http.StatusBadRequest,
		message: fmt.Sprintf("the policy %q does not allow the model %q", name, model),
		errType: "invalid_request_error", param: "model", code: "model_not_allowed"}
}

func errPolicyExcludesAll(name, model string) *apiError {
	return &apiError{status: http.StatusBadRequest,
		message: fmt.Sprintf("no provider of the model %q satisfies the policy %q (max_output_rate)", model, name),
		errType: "invalid_request_error", param: "model", code: "no_provider_for_policy"}
}

func errAllUnhealthy(model string, wait time.Duration) *apiError {
	if wait < time.Second {
		wait = time.Second
	}
	return &apiError{status: http.StatusServiceUnavailable,
		message: fmt.Sprintf("every provider of the model %q is temporarily unavailable (circuit open or rate limited); retry after %d seconds", model, int(math.Ceil(wait.Seconds()))),
		errType: "server_error", code: "providers_unavailable", retryAfter: wait}
}

func errAllFailed(attempts []attemptRecord) *apiError {
	last := attempts[len(attempts)-1]
	return &apiError{status: http.StatusBadGateway,
		message: fmt.Sprintf("every provider failed; the last, %s, %s", last.provider, last.describe()),
		errType: "server_error", code: "upstream_failed", noRetry: true, attempts: attempts}
}

func errRateLimited(wait time.Duration, attempts []attemptRecord) *apiError {
	if wait < time.Second {
		wait = time.Second
	}
	return &apiError{status: http.StatusTooManyRequests,
		message: fmt.Sprintf("every provider is rate limiting; retry after %d seconds", int(math.Ceil(wait.Seconds()))),
		errType: "requests", code: "rate_limit_exceeded", retryAfter: wait, attempts: attempts}
}

func errDeadline(timeout time.Duration, attempts []attemptRecord) *apiError {
	return &apiError{status: http.StatusGatewayTimeout,
		message: fmt.Sprintf("no provider answered within the %s deadline (timeout) after %d attempt(s)", timeout, len(attempts)),
		errType: "server_error", code: "upstream_timeout", noRetry: true, attempts: attempts}
}

func errInternal(format string, args ...any) *apiError {
	return &apiError{status: http.StatusInternalServerError, message: fmt.Sprintf(format, args...),
		errType: "server_error", code: "internal_error"}
}
