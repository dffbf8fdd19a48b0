package arbstr

import "bytes"

// redacted replaces a provider's API key in what is relayed to a client.
var redacted = []byte("[redacted]")

// minRedactedKey is the shortest key that is redacted: replacing a key of
// a few bytes would mangle answers that happen to contain those letters,
// and no real provider issues one.
const minRedactedKey = 8

// redact replaces every occurrence of the provider's key in b with
// [redacted], so that a provider that echoes its request headers (in an
// error body or an in-band error event) cannot hand its key to the client
// (SPEC §8). b is returned as it is when it holds no key, which is the
// common case and costs one scan.
func (p *provider) redact(b []byte) []byte {
	if p.redactKey == nil || !bytes.Contains(b, p.redactKey) {
		return b
	}
	return bytes.ReplaceAll(b, p.redactKey, redacted)
}
