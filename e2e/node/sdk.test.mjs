// What a user of the official openai SDK relies on beyond the fault matrix:
// the SDK's stream helper, tools and response_format passing through
// untouched, and the SDK's own retries never multiplying upstream calls
// after arbstr gave up.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { APIError, InternalServerError, RateLimitError } from 'openai';
import { startArbstr } from './harness.mjs';

const TOOLS = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'Current weather of a city',
      parameters: {
        type: 'object',
        properties: { city: { type: 'string' }, unit: { type: 'string', enum: ['c', 'f'] } },
        required: ['city'],
        additionalProperties: false,
      },
      strict: true,
    },
  },
];
const RESPONSE_FORMAT = {
  type: 'json_schema',
  json_schema: {
    name: 'weather',
    strict: true,
    schema: {
      type: 'object',
      properties: { city: { type: 'string' }, temperature_c: { type: 'number' } },
      required: ['city', 'temperature_c'],
      additionalProperties: false,
    },
  },
};
const TOOL_ARGUMENTS = '{"city":"Paris","unit":"c"}';
const JSON_ANSWER = '{"city":"Paris","temperature_c":21.5}';

/**
 * A recording OpenAI-compatible upstream: it keeps every request it got and
 * answers a tool call when the request has tools, else JSON text.
 */
function startCapture() {
  const requests = [];
  const server = http.createServer((req, res) => {
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (d) => (raw += d));
    req.on('end', () => {
      const body = JSON.parse(raw);
      requests.push({ headers: req.headers, raw, body });
      const base = { id: 'chatcmpl-capture', created: 1700000000, model: body.model };
      const toolCall = { id: 'call_e2e', type: 'function', function: { name: 'get_weather', arguments: TOOL_ARGUMENTS } };
      const usage = { prompt_tokens: 30, completion_tokens: 12, total_tokens: 42 };
      const finish = body.tools ? 'tool_calls' : 'stop';
      if (!body.stream) {
        const message = body.tools
          ? { role: 'assistant', content: null, tool_calls: [toolCall] }
          : { role: 'assistant', content: JSON_ANSWER };
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ ...base, object: 'chat.completion', choices: [{ index: 0, message, finish_reason: finish }], usage }));
        return;
      }
      const chunk = (delta, finishReason = null, extra = {}) =>
        `data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices: [{ index: 0, delta, finish_reason: finishReason }], ...extra })}\n\n`;
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      if (body.tools) {
        res.write(chunk({ role: 'assistant', content: null, tool_calls: [{ index: 0, ...toolCall, function: { name: 'get_weather', arguments: '' } }] }));
        res.write(chunk({ tool_calls: [{ index: 0, function: { arguments: TOOL_ARGUMENTS.slice(0, 10) } }] }));
        res.write(chunk({ tool_calls: [{ index: 0, function: { arguments: TOOL_ARGUMENTS.slice(10) } }] }));
      } else {
        res.write(chunk({ role: 'assistant', content: '' }));
        res.write(chunk({ content: JSON_ANSWER.slice(0, 12) }));
        res.write(chunk({ content: JSON_ANSWER.slice(12) }));
      }
      res.write(chunk({}, finish));
      if (body.stream_options?.include_usage) {
        res.write(`data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices: [], usage })}\n\n`);
      }
      res.end('data: [DONE]\n\n');
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, requests })));
}

/** A fetch for the SDK that records the status of every HTTP request it makes. */
function countingFetch(statuses, bodies = []) {
  return async (url, init) => {
    bodies.push(init?.body);
    const r = await fetch(url, init);
    statuses.push(r.status);
    return r;
  };
}

let arb;
let capture;
before(async () => {
  capture = await startCapture();
  arb = await startArbstr({ fixedPorts: { capture: capture.server.address().port } });
});
after(async () => {
  await arb?.stop();
  await new Promise((r) => capture?.server.close(r));
});

describe('streams as the SDK and a raw client see them', () => {
  test('sdk: chat.completions.stream() assembles the answer and is not thrown by the cost comment', async () => {
    const stream = arb.client('healthy').chat.completions.stream({
      model: 'e2e-sdk-helper',
      messages: [{ role: 'user', content: 'Say hello' }],
    });
    const deltas = [];
    stream.on('content', (delta) => deltas.push(delta));
    const final = await stream.finalChatCompletion();
    assert.equal(final.choices[0].message.content, 'Hello from steady, the provider that answers.');
    assert.equal(final.choices[0].finish_reason, 'stop');
    assert.ok(deltas.length > 1, `content arrived in ${deltas.length} piece(s)`);
  });

  test('sdk: raw streams end with the cost comment the SDK skips and [DONE], also when the provider left it out', async () => {
    for (const scenario of ['healthy', 'no_done', 'malformed']) {
      const r = await arb.post(scenario, { model: `e2e-raw-${scenario}`, stream: true, messages: [{ role: 'user', content: 'Say hello' }] });
      const raw = await r.text();
      assert.equal(r.status, 200, scenario);
      assert.match(raw, /\n: x-arbstr-cost-sats: \d+\.\d\d\n\ndata: \[DONE\]\n\n$/, scenario);
      for (const line of raw.split('\n').filter((l) => l.startsWith('data: {'))) {
        JSON.parse(line.slice('data: '.length)); // a malformed event is dropped, never forwarded
      }
    }
  });

  test('sdk: chat.completions.stream() rejects a stream cut after commit', async () => {
    const stream = arb.client('cut').chat.completions.stream({
      model: 'e2e-sdk-helper-cut',
      messages: [{ role: 'user', content: 'Say hello' }],
    });
    let content = '';
    stream.on('content', (delta) => (content += delta));
    await assert.rejects(stream.finalChatCompletion(), (err) => err instanceof APIError && err.code === 'stream_broken');
    assert.ok(content.length > 0 && !content.endsWith('complete.'), `partial content: ${content}`);
  });

  test('sdk: a broken stream is cut, so even a client that ignores error events sees a failure', async () => {
    const r = await arb.post('cut', { model: 'e2e-raw-cut', stream: true, messages: [{ role: 'user', content: 'Say hello' }] });
    assert.equal(r.status, 200);
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let text = '';
    const failure = await (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return null;
        text += decoder.decode(value, { stream: true });
      }
    })().catch((err) => err);
    assert.ok(failure instanceof Error, 'reading the body must fail, not end cleanly');
    assert.match(text, /data: \{"error":\{.*"code":"stream_broken"/);
    assert.doesNotMatch(text, /\[DONE\]/);
  });
});

describe('tools and response_format through arbstr', () => {
  test('sdk: tools reach the provider as sent, and the tool call comes back parsed', async () => {
    const bodies = [];
    const client = arb.client('capture', { fetch: countingFetch([], bodies) });
    capture.requests.length = 0;
    const completion = await client.chat.completions.create({
      model: 'e2e-tools',
      messages: [{ role: 'user', content: 'Weather in Paris?' }],
      tools: TOOLS,
      tool_choice: 'auto',
      parallel_tool_calls: false,
    });
    assert.equal(capture.requests.length, 1);
    const up = capture.requests[0];
    assert.equal(up.raw, bodies[0], 'the provider got the SDK request byte for byte');
    assert.deepEqual(up.body.tools, TOOLS);
    assert.equal(up.headers.authorization, 'Bearer e2e-provider-key', "the provider's key, never the client's");
    assert.equal(completion.choices[0].finish_reason, 'tool_calls');
    assert.deepEqual(completion.choices[0].message.tool_calls, [
      { id: 'call_e2e', type: 'function', function: { name: 'get_weather', arguments: TOOL_ARGUMENTS } },
    ]);
  });

  test('sdk: a streamed tool call is assembled by the SDK', async () => {
    const bodies = [];
    const client = arb.client('capture', { fetch: countingFetch([], bodies) });
    capture.requests.length = 0;
    const chunks = [];
    const stream = client.chat.completions.stream({
      model: 'e2e-tools-stream',
      messages: [{ role: 'user', content: 'Weather in Paris?' }],
      tools: TOOLS,
    });
    stream.on('chunk', (c) => chunks.push(c));
    const final = await stream.finalChatCompletion();
    const call = final.choices[0].message.tool_calls[0];
    assert.equal(call.function.name, 'get_weather');
    assert.equal(call.function.arguments, TOOL_ARGUMENTS);
    assert.equal(final.choices[0].finish_reason, 'tool_calls');

    const up = capture.requests[0];
    const sent = JSON.parse(bodies[0]);
    assert.equal(sent.stream_options, undefined, 'the SDK did not ask for usage');
    // arbstr asked for usage on the client's behalf, and kept the usage
    // chunk to itself.
    assert.deepEqual(up.body, { ...sent, stream_options: { include_usage: true } });
    assert.ok(chunks.every((c) => !c.usage), 'no usage chunk reached a client that did not ask for it');
  });

  test('sdk: response_format reaches the provider as sent, plain and streamed', async () => {
    for (const stream of [false, true]) {
      const bodies = [];
      const client = arb.client('capture', { fetch: countingFetch([], bodies) });
      capture.requests.length = 0;
      const params = {
        model: `e2e-json-${stream}`,
        messages: [{ role: 'user', content: 'Weather in Paris as JSON' }],
        response_format: RESPONSE_FORMAT,
      };
      let content;
      if (stream) {
        content = (await client.chat.completions.stream(params).finalChatCompletion()).choices[0].message.content;
      } else {
        content = (await client.chat.completions.create(params)).choices[0].message.content;
      }
      assert.deepEqual(capture.requests[0].body.response_format, RESPONSE_FORMAT);
      assert.deepEqual(JSON.parse(content), JSON.parse(JSON_ANSWER));
      if (!stream) assert.equal(capture.requests[0].raw, bodies[0]);
    }
  });
});

describe('the SDK does not multiply upstream calls (default maxRetries 2)', () => {
  /** Runs one request with the SDK's default retries; reports statuses, stand-in calls and the error. */
  async function withDefaultRetries(scenario, standins, params = {}) {
    const statuses = [];
    const client = arb.client(scenario, { maxRetries: 2, fetch: countingFetch(statuses) });
    await arb.resetCalls(...standins);
    const start = performance.now();
    let error;
    try {
      await client.chat.completions.create({
        model: `e2e-retries-${scenario}`,
        messages: [{ role: 'user', content: 'Say hello' }],
        ...params,
      });
    } catch (err) {
      error = err;
    }
    return { statuses, error, calls: await arb.callsOf(standins), ms: performance.now() - start };
  }

  test('sdk: 502 after every provider failed: one round of upstream attempts', async () => {
    const r = await withDefaultRetries('all_fail', ['fail_503', 'fail_502']);
    assert.deepEqual(r.statuses, [502], 'x-should-retry: false stops the SDK');
    assert.ok(r.error instanceof InternalServerError && r.error.status === 502);
    assert.deepEqual(r.calls, { fail_503: 2, fail_502: 2 });
  });

  test('sdk: 504 at the deadline: one round of upstream attempts', async () => {
    const r = await withDefaultRetries('deadline', ['silent']);
    assert.deepEqual(r.statuses, [504]);
    assert.ok(r.error instanceof InternalServerError && r.error.status === 504);
    assert.deepEqual(r.calls, { silent: 1 });
  });

  test('sdk: a 429 from the only provider reaches the SDK as a RateLimitError with Retry-After, which the SDK waits out', async () => {
    const r = await withDefaultRetries('rate_limit_only', ['limited_only']);
    assert.deepEqual(r.statuses, [429, 429, 429], 'the SDK retries a rate limit after Retry-After');
    assert.ok(r.error instanceof RateLimitError, `${r.error?.constructor.name}`);
    assert.equal(r.error.code, 'rate_limit_exceeded');
    assert.ok(r.ms >= 1800, `took ${r.ms}ms: the SDK must wait Retry-After (1s) between tries`);
    assert.deepEqual(r.calls, { limited_only: 3 }, 'one upstream call per SDK try, no more');
  });

  test('sdk: a provider 400 is relayed once and not retried', async () => {
    const r = await withDefaultRetries('bad_request', ['bad_request', 'steady']);
    assert.deepEqual(r.statuses, [400]);
    assert.equal(r.error?.status, 400);
    assert.deepEqual(r.calls, { bad_request: 1, steady: 0 });
  });

  test('sdk: a stream that broke after commit is raised once, never retried', async () => {
    const statuses = [];
    const client = arb.client('cut', { maxRetries: 2, fetch: countingFetch(statuses) });
    await arb.resetCalls('cut', 'steady');
    const stream = await client.chat.completions.create({
      model: 'e2e-retries-cut-stream',
      stream: true,
      messages: [{ role: 'user', content: 'Say hello' }],
    });
    await assert.rejects(async () => {
      for await (const _ of stream);
    }, (err) => err instanceof APIError && err.code === 'stream_broken');
    assert.deepEqual(statuses, [200]);
    assert.deepEqual(await arb.callsOf(['cut', 'steady']), { cut: 1, steady: 0 });
  });

  test('sdk: 503 with every circuit open: the SDK waits Retry-After, retries once, and the probe decides', async () => {
    const model = 'e2e-retries-breaker';
    await arb.openBreaker(model);
    const statuses = [];
    const client = arb.client('breaker', { maxRetries: 2, fetch: countingFetch(statuses) });
    await arb.resetCalls('fragile');
    const start = performance.now();
    const err = await client.chat.completions
      .create({ model, messages: [{ role: 'user', content: 'Say hello' }] })
      .then(() => null, (e) => e);
    const ms = performance.now() - start;
    // 503 + Retry-After: 1; the SDK sleeps 1s; by then the circuit is half
    // open and this retry is its one probe, which fails: 502 with
    // x-should-retry: false ends it. Two SDK requests, one upstream call.
    assert.deepEqual(statuses, [503, 502]);
    assert.ok(err instanceof InternalServerError && err.status === 502, `${err}`);
    assert.deepEqual(await arb.callsOf(['fragile']), { fragile: 1 });
    assert.ok(ms >= 900, `the SDK waited ${ms}ms, want about Retry-After (1s)`);
  });
});
