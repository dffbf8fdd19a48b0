// The APIs arbstr routes besides chat completions, through the official
// SDKs: embeddings and the Responses API (openai), and Anthropic's Messages
// API (@anthropic-ai/sdk). Each is tried on a healthy route and on one whose
// cheapest provider fails, where the client must see one good answer from
// the next provider.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { BadRequestError } from '@anthropic-ai/sdk';
import { startArbstr } from './harness.mjs';

const STEADY = 'Hello from steady, the provider that answers.';
const CLAUDE = 'Hello from claude, the Anthropic provider that answers.';

let arb;
before(async () => {
  arb = await startArbstr();
});
after(async () => {
  await arb?.stop();
});

/** A fetch for an SDK that records the JSON body of every request it sends. */
function recordingFetch(bodies) {
  return (url, init) => {
    bodies.push(init?.body ? JSON.parse(init.body) : undefined);
    return fetch(url, init);
  };
}

/** Asserts who served a request, the retries before it and each stand-in's calls. */
async function assertServed(response, { provider, retries = null, calls }) {
  assert.equal(response.headers.get('x-arbstr-provider'), provider);
  assert.equal(response.headers.get('x-arbstr-retries'), retries);
  assert.deepEqual(await arb.callsOf(Object.keys(calls)), calls);
}

describe('embeddings (openai SDK)', () => {
  const INPUT = ['The first text to embed.', 'A second one.'];

  test('sdk: embeddings.create decodes the vectors the SDK asked for as base64, and reports usage', async () => {
    const bodies = [];
    await arb.resetCalls('steady');
    const client = arb.client('healthy', { fetch: recordingFetch(bodies) });
    const { data: got, response } = await client.embeddings
      .create({ model: 'e2e-embed', input: INPUT })
      .withResponse();
    await assertServed(response, { provider: 'steady', calls: { steady: 1 } });
    assert.equal(bodies[0].encoding_format, 'base64', 'the SDK asks for base64 by default');
    assert.equal(got.data.length, 2);
    for (const [i, item] of got.data.entries()) {
      assert.equal(item.index, i);
      assert.ok(Array.isArray(item.embedding) && item.embedding.length === 8, `vector ${i}: ${item.embedding}`);
      assert.ok(item.embedding.every(Number.isFinite) && item.embedding.some((x) => x !== 0));
    }
    assert.notDeepEqual(got.data[0].embedding, got.data[1].embedding);
    assert.ok(got.usage.prompt_tokens > 0, JSON.stringify(got.usage));
    assert.equal(got.usage.total_tokens, got.usage.prompt_tokens);

    // The same input as floats: the decoded base64 is the same vector.
    const floats = await client.embeddings.create({ model: 'e2e-embed', input: INPUT, encoding_format: 'float' });
    for (const i of [0, 1]) {
      floats.data[i].embedding.forEach((x, j) => assert.ok(Math.abs(x - got.data[i].embedding[j]) < 1e-6));
    }
  });

  test('sdk: embeddings fall back when the cheapest provider answers 503', async () => {
    await arb.resetCalls('down', 'steady');
    const { data: got, response } = await arb
      .client('fallback')
      .embeddings.create({ model: 'e2e-embed-fallback', input: 'Embed me.' })
      .withResponse();
    await assertServed(response, { provider: 'steady', retries: '2/down', calls: { down: 2, steady: 1 } });
    assert.equal(got.data.length, 1);
    assert.equal(got.data[0].embedding.length, 8);
    assert.ok(got.usage.prompt_tokens > 0);
  });
});

describe('responses (openai SDK)', () => {
  const params = (model) => ({ model, input: 'Say hello', instructions: 'Be brief.' });

  /** Streams a response and collects what the SDK's user sees. */
  async function streamResponse(scenario, model) {
    const { data: stream, response } = await arb
      .client(scenario)
      .responses.create({ ...params(model), stream: true })
      .withResponse();
    const seen = { response, types: [], deltas: [], completed: null };
    for await (const event of stream) {
      seen.types.push(event.type);
      if (event.type === 'response.output_text.delta') seen.deltas.push(event.delta);
      if (event.type === 'response.completed') seen.completed = event.response;
    }
    return seen;
  }

  function assertStreamed(seen) {
    assert.ok(seen.deltas.length > 1, `the text came in ${seen.deltas.length} delta(s)`);
    assert.equal(seen.deltas.join(''), STEADY);
    assert.ok(!seen.types.includes('error') && !seen.types.includes('response.failed'), seen.types.join(' '));
    assert.equal(seen.types.at(-1), 'response.completed');
    assert.equal(seen.completed.status, 'completed');
    assert.ok(seen.completed.usage.input_tokens > 0 && seen.completed.usage.output_tokens > 0, JSON.stringify(seen.completed.usage));
    assert.equal(seen.completed.usage.total_tokens, seen.completed.usage.input_tokens + seen.completed.usage.output_tokens);
  }

  test('sdk: responses.create gives output_text and usage', async () => {
    await arb.resetCalls('steady');
    const { data: got, response } = await arb.client('healthy').responses.create(params('e2e-responses')).withResponse();
    await assertServed(response, { provider: 'steady', calls: { steady: 1 } });
    assert.equal(got.output_text, STEADY);
    assert.equal(got.status, 'completed');
    assert.ok(got.usage.input_tokens > 0 && got.usage.output_tokens > 0, JSON.stringify(got.usage));
  });

  test('sdk: responses.create falls back when the cheapest provider answers 503', async () => {
    await arb.resetCalls('down', 'steady');
    const { data: got, response } = await arb.client('fallback').responses.create(params('e2e-responses-fallback')).withResponse();
    await assertServed(response, { provider: 'steady', retries: '2/down', calls: { down: 2, steady: 1 } });
    assert.equal(got.output_text, STEADY);
    assert.ok(got.usage.output_tokens > 0);
  });

  test('sdk: a streamed response: text deltas, then response.completed with usage', async () => {
    await arb.resetCalls('steady');
    const seen = await streamResponse('healthy', 'e2e-responses-stream');
    await assertServed(seen.response, { provider: 'steady', calls: { steady: 1 } });
    assertStreamed(seen);
    assert.equal(seen.types[0], 'response.created');
  });

  test('sdk: a streamed response falls back when the cheapest provider answers 503', async () => {
    await arb.resetCalls('down', 'steady');
    const seen = await streamResponse('fallback', 'e2e-responses-stream-fallback');
    await assertServed(seen.response, { provider: 'steady', retries: '2/down', calls: { down: 2, steady: 1 } });
    assertStreamed(seen);
  });

  test('sdk: a streamed response falls back when the cheapest provider streams an error event first', async () => {
    await arb.resetCalls('error_event', 'steady');
    const seen = await streamResponse('error_event', 'e2e-responses-stream-error-event');
    await assertServed(seen.response, { provider: 'steady', retries: '1/error_event', calls: { error_event: 1, steady: 1 } });
    assertStreamed(seen);
  });
});

describe('messages (@anthropic-ai/sdk)', () => {
  const params = (model) => ({ model, max_tokens: 64, messages: [{ role: 'user', content: 'Say hello' }] });

  /** Streams a message with the SDK's helper and collects what its user sees. */
  async function streamMessage(scenario, model) {
    const stream = arb.anthropic(scenario).messages.stream(params(model));
    const deltas = [];
    stream.on('text', (delta) => deltas.push(delta));
    const { response } = await stream.withResponse();
    const final = await stream.finalMessage();
    return { response, deltas, final };
  }

  function assertMessage(message) {
    assert.equal(message.role, 'assistant');
    assert.deepEqual(
      message.content.map((b) => [b.type, b.text]),
      [['text', CLAUDE]],
    );
    assert.equal(message.stop_reason, 'end_turn');
    assert.ok(message.usage.input_tokens > 0, JSON.stringify(message.usage));
    assert.equal(message.usage.output_tokens, CLAUDE.split(' ').length);
  }

  test('sdk: messages.create: text and usage from the anthropic provider, never the cheaper OpenAI one', async () => {
    await arb.resetCalls('openai_cheap', 'claude');
    let sent;
    const fetchRecording = (url, init) => {
      sent = new Headers(init?.headers);
      return fetch(url, init);
    };
    const { data: got, response } = await arb
      .anthropic('anthropic', { fetch: fetchRecording })
      .messages.create(params('e2e-messages'))
      .withResponse();
    await assertServed(response, { provider: 'claude', calls: { openai_cheap: 0, claude: 1 } });
    assertMessage(got);
    const seen = await arb.lastRequest('claude');
    assert.equal(seen.path, '/v1/messages');
    assert.deepEqual(seen.headers['X-Api-Key'], ['e2e-anthropic-key'], "the provider's key, never the client's");
    assert.ok(sent.get('anthropic-version'), 'the SDK sent anthropic-version');
    assert.deepEqual(seen.headers['Anthropic-Version'], [sent.get('anthropic-version')], "the SDK's anthropic-version passes on");
    assert.equal(seen.headers.Authorization, undefined);
  });

  test('sdk: the anthropic-beta header passes on to the provider', async () => {
    await arb
      .anthropic('anthropic')
      .messages.create(params('e2e-messages-beta'), { headers: { 'anthropic-beta': 'e2e-beta-2026-01-01' } });
    const seen = await arb.lastRequest('claude');
    assert.deepEqual(seen.headers['Anthropic-Beta'], ['e2e-beta-2026-01-01']);
  });

  test('sdk: messages.create falls back when the cheapest provider answers 500', async () => {
    await arb.resetCalls('claude_down', 'claude');
    const { data: got, response } = await arb
      .anthropic('anthropic_fallback')
      .messages.create(params('e2e-messages-fallback'))
      .withResponse();
    await assertServed(response, { provider: 'claude', retries: '2/claude_down', calls: { claude_down: 2, claude: 1 } });
    assertMessage(got);
  });

  test('sdk: messages.stream: text deltas, the final message and usage', async () => {
    await arb.resetCalls('openai_cheap', 'claude');
    const seen = await streamMessage('anthropic', 'e2e-messages-stream');
    await assertServed(seen.response, { provider: 'claude', calls: { openai_cheap: 0, claude: 1 } });
    assert.ok(seen.deltas.length > 1, `the text came in ${seen.deltas.length} delta(s)`);
    assert.equal(seen.deltas.join(''), CLAUDE);
    assertMessage(seen.final);
  });

  test('sdk: messages.stream falls back when the cheapest provider answers 500', async () => {
    await arb.resetCalls('claude_down', 'claude');
    const seen = await streamMessage('anthropic_fallback', 'e2e-messages-stream-fallback');
    await assertServed(seen.response, { provider: 'claude', retries: '2/claude_down', calls: { claude_down: 2, claude: 1 } });
    assert.equal(seen.deltas.join(''), CLAUDE);
    assertMessage(seen.final);
  });

  test('sdk: messages.stream falls back when the cheapest provider streams event: error first', async () => {
    await arb.resetCalls('claude_error_event', 'claude');
    const seen = await streamMessage('anthropic_error_event', 'e2e-messages-stream-error-event');
    await assertServed(seen.response, {
      provider: 'claude',
      retries: '1/claude_error_event',
      calls: { claude_error_event: 1, claude: 1 },
    });
    assert.equal(seen.deltas.join(''), CLAUDE);
    assertMessage(seen.final);
  });

  test('sdk: a request without max_tokens is a BadRequestError in Anthropic’s shape and reaches no provider', async () => {
    await arb.resetCalls('openai_cheap', 'claude');
    const { max_tokens: _, ...noMaxTokens } = params('e2e-messages-refused');
    const err = await arb
      .anthropic('anthropic')
      .messages.create(noMaxTokens)
      .then(() => null, (e) => e);
    assert.ok(err instanceof BadRequestError, `${err?.constructor.name}: ${err}`);
    assert.equal(err.status, 400);
    assert.equal(err.type, 'invalid_request_error');
    assert.equal(err.error.type, 'error');
    assert.equal(err.error.error.type, 'invalid_request_error');
    assert.match(err.error.error.message, /max_tokens/);
    assert.deepEqual(await arb.callsOf(['openai_cheap', 'claude']), { openai_cheap: 0, claude: 0 });
  });
});
