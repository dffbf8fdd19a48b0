// The fault matrix (e2e/faults.json) through the official openai SDK: each
// scenario once as a plain request and once streamed, with the SDK's own
// retries off so that what it reports is arbstr's answer.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { APIError, BadRequestError, InternalServerError, NotFoundError, RateLimitError } from 'openai';
import { matrix, startArbstr } from './harness.mjs';

let arb;
before(async () => {
  arb = await startArbstr();
});
after(async () => {
  await arb?.stop();
});

/** The SDK error class a status maps to. */
function errorClassFor(status) {
  if (status === 400) return BadRequestError;
  if (status === 404) return NotFoundError;
  if (status === 429) return RateLimitError;
  if (status >= 500) return InternalServerError;
  throw new Error(`no error class expected for ${status}`);
}

/** Sends one request through the SDK and reports what its user would see. */
async function run(sc, mode) {
  const client = arb.client(sc.path);
  const params = {
    model: sc.model ?? `e2e-${sc.name}-${mode}`,
    messages: [{ role: 'user', content: 'Say hello' }],
  };
  const options = { headers: sc.headers ?? {} };
  const seen = {};
  const start = performance.now();
  try {
    if (mode === 'plain') {
      const { data, response } = await client.chat.completions.create(params, options).withResponse();
      Object.assign(seen, { status: response.status, headers: response.headers });
      seen.content = data.choices[0].message.content;
    } else {
      const { data: stream, response } = await client.chat.completions
        .create({ ...params, stream: true }, options)
        .withResponse();
      Object.assign(seen, { status: response.status, headers: response.headers });
      let text = '';
      seen.ids = new Set();
      try {
        for await (const chunk of stream) {
          text += chunk.choices[0]?.delta?.content ?? '';
          seen.ids.add(chunk.id);
        }
        seen.content = text;
      } catch (err) {
        Object.assign(seen, { streamError: err, partial: text });
      }
    }
  } catch (err) {
    if (!(err instanceof APIError) || err.status === undefined) throw err;
    Object.assign(seen, { status: err.status, headers: err.headers, error: err });
  }
  seen.ms = performance.now() - start;
  return seen;
}

for (const sc of matrix.scenarios) {
  describe(`provider that ${sc.fault}`, () => {
    for (const mode of ['plain', 'stream']) {
      const want = sc[mode];
      test(`${sc.name}, ${mode}`, async () => {
        const standins = Object.keys(want.calls);
        if (sc.open_breaker) await arb.openBreaker(sc.model ?? `e2e-${sc.name}-${mode}`);
        await arb.resetCalls(...standins);

        const seen = await run(sc, mode);

        assert.equal(seen.status, want.status, `status; SDK error: ${seen.error?.message}`);
        assert.equal(seen.headers.get('x-arbstr-provider'), want.provider ?? null, 'x-arbstr-provider');
        assert.equal(seen.headers.get('x-arbstr-retries'), want.retries ?? null, 'x-arbstr-retries');
        assert.match(seen.headers.get('x-arbstr-request-id') ?? '', /^arb-/, 'x-arbstr-request-id');
        if (want.status !== 200) {
          // Refused before anything was streamed: the SDK raises its error
          // class for the status, with arbstr's (or the provider's) code.
          assert.ok(seen.error instanceof errorClassFor(want.status), `error class: ${seen.error?.constructor.name}`);
          assert.equal(seen.error.code, want.error, 'error code');
          assert.equal(seen.headers.get('x-should-retry'), want.should_retry ?? null, 'x-should-retry');
          if (want.retry_after) {
            assert.ok(Number(seen.headers.get('retry-after')) >= 1, `Retry-After: ${seen.headers.get('retry-after')}`);
          }
        } else if (want.error) {
          // The stream broke after commit: the SDK must raise, never hand
          // back the truncated text as a complete answer.
          assert.equal(seen.content, undefined, `the SDK returned a truncated answer: ${JSON.stringify(seen.content)}`);
          assert.ok(seen.streamError instanceof APIError, `stream error: ${seen.streamError}`);
          assert.equal(seen.streamError.code, want.error, 'stream error code');
        } else {
          assert.equal(seen.content, want.content, 'answer');
          if (mode === 'stream') assert.equal(seen.headers.get('x-arbstr-streaming'), 'true');
          // A stream finished by a prefill provider is one answer: one id.
          if (want.continued) assert.equal(seen.ids.size, 1, `chunk ids: ${[...seen.ids]}`);
        }
        if (want.min_ms !== undefined) assert.ok(seen.ms >= want.min_ms, `took ${seen.ms}ms, want ≥ ${want.min_ms}`);
        if (want.max_ms !== undefined) assert.ok(seen.ms <= want.max_ms, `took ${seen.ms}ms, want ≤ ${want.max_ms}`);
        assert.deepEqual(await arb.callsOf(standins), want.calls, 'requests each stand-in got');
      });
    }
  });
}
