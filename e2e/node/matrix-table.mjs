// Prints the fault table of docs/failures-and-streaming.md from
// e2e/faults.json, the file both SDK suites assert, so that the table says
// exactly what the tests check:
//   node e2e/node/matrix-table.mjs
import { matrix } from './harness.mjs';

const ERROR_CLASS = { 400: 'BadRequestError', 404: 'NotFoundError', 429: 'RateLimitError', 502: 'InternalServerError', 503: 'InternalServerError', 504: 'InternalServerError' };

function sees(want, mode) {
  if (want.status !== 200) {
    const extra = [want.should_retry ? '`x-should-retry: false`' : '', want.retry_after ? '`Retry-After`' : ''].filter(Boolean).join(', ');
    const where = mode === 'stream' ? ' before any event' : '';
    const what = want.provider ? `the provider's own error body (\`${want.error}\`)` : `\`${want.error}\``;
    return `${want.status} ${what}${where}${extra ? `, ${extra}` : ''} (SDK: ${ERROR_CLASS[want.status]})`;
  }
  if (want.error) {
    return `200, part of the answer, then an error event \`${want.error}\` and a cut connection: the SDK raises`;
  }
  const answer = want.provider === 'steady' ? "steady's answer" : 'the answer';
  return mode === 'stream' ? `200, ${answer} streamed, ending in \`[DONE]\`` : `200, ${answer}`;
}

function served(want) {
  const parts = [want.provider ? `**${want.provider}**` : 'nobody'];
  if (want.retries) parts.push(`\`x-arbstr-retries: ${want.retries}\``);
  const calls = Object.entries(want.calls)
    .map(([name, n]) => `${name} ${n}`)
    .join(', ');
  return `${parts.join(', ')} (upstream calls: ${calls})`;
}

const rows = [
  '| A provider that … | non-streaming client sees | streaming client sees | served by, headers |',
  '|---|---|---|---|',
];
for (const sc of matrix.scenarios) {
  const plain = served(sc.plain);
  const stream = served(sc.stream);
  const by = plain === stream ? plain : `plain: ${plain}; stream: ${stream}`;
  rows.push(`| ${sc.fault} | ${sees(sc.plain, 'plain')} | ${sees(sc.stream, 'stream')} | ${by} |`);
}
console.log(rows.join('\n'));
