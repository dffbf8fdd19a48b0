// Runs the built Caddy (with arbstr) on e2e/Caddyfile.tmpl, every
// {{port.NAME}} filled in with a free port of 127.0.0.1, and gives the tests
// the URLs of its router scenarios and stand-in providers.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

export const E2E_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const PORT_PATTERN = /\{\{port\.([a-z0-9_]+)\}\}/g;

/** The fault matrix shared with the Go suite. */
export const matrix = JSON.parse(fs.readFileSync(path.join(E2E_DIR, 'faults.json'), 'utf8'));

/** Free ports of 127.0.0.1, one per name, all held open until all are known. */
export async function freePorts(names) {
  const servers = await Promise.all(
    names.map(
      () =>
        new Promise((resolve, reject) => {
          const s = net.createServer();
          s.once('error', reject);
          s.listen(0, '127.0.0.1', () => resolve(s));
        }),
    ),
  );
  const ports = Object.fromEntries(names.map((n, i) => [n, servers[i].address().port]));
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/**
 * Starts Caddy. fixedPorts gives ports the test process already listens on
 * itself (the capture upstream).
 */
export async function startArbstr({ fixedPorts = {} } = {}) {
  const bin = process.env.ARBSTR_E2E_CADDY;
  if (!bin) {
    throw new Error('ARBSTR_E2E_CADDY must name a caddy binary built with arbstr (e2e/run.sh builds one)');
  }
  const template = fs.readFileSync(path.join(E2E_DIR, 'Caddyfile.tmpl'), 'utf8');
  const names = [...new Set([...template.matchAll(PORT_PATTERN)].map((m) => m[1]))];
  const ports = { ...(await freePorts(names.filter((n) => !(n in fixedPorts)))), ...fixedPorts };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arbstr-e2e-node-'));
  const config = path.join(dir, 'Caddyfile');
  fs.writeFileSync(config, template.replace(PORT_PATTERN, (_, n) => String(ports[n])));
  const logPath = path.join(dir, 'caddy.log');
  const log = fs.openSync(logPath, 'w');
  const child = spawn(bin, ['run', '--config', config, '--adapter', 'caddyfile'], {
    stdio: ['ignore', log, log],
    // Caddy's data and config dirs go to the temp dir, not the user's home.
    env: { ...process.env, XDG_DATA_HOME: dir, XDG_CONFIG_HOME: dir },
  });
  fs.closeSync(log);
  // A test process that dies without after() must not leave Caddy running.
  process.once('exit', () => child.kill('SIGKILL'));
  let exited = null;
  const exit = new Promise((resolve) => child.once('exit', (code, signal) => resolve((exited = { code, signal }))));

  const arb = new Arbstr(ports, dir, logPath, child, exit);
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (exited) {
      throw new Error(`caddy exited (${JSON.stringify(exited)}) before serving:\n${fs.readFileSync(logPath, 'utf8')}`);
    }
    try {
      const r = await fetch(`${arb.baseURL('healthy')}/models`);
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await arb.stop();
      throw new Error(`caddy did not serve within 15s; log:\n${fs.readFileSync(logPath, 'utf8')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return arb;
}

class Arbstr {
  constructor(ports, dir, logPath, child, exit) {
    this.ports = ports;
    this.dir = dir;
    this.logPath = logPath;
    this.child = child;
    this.exit = exit;
  }

  /** The OpenAI base URL of a router scenario. */
  baseURL(scenario) {
    return `http://127.0.0.1:${this.ports.router}/${scenario}/v1`;
  }

  /**
   * An SDK client for a scenario. Retries are off unless asked for, so that
   * a test sees arbstr's own answer.
   */
  client(scenario, options = {}) {
    return new OpenAI({ baseURL: this.baseURL(scenario), apiKey: 'sk-e2e-client-key', maxRetries: 0, ...options });
  }

  /**
   * An Anthropic SDK client for a scenario, retries off. The SDK appends
   * /v1/messages to its base URL, so the base is the scenario's root.
   */
  anthropic(scenario, options = {}) {
    return new Anthropic({
      baseURL: `http://127.0.0.1:${this.ports.router}/${scenario}`,
      apiKey: 'sk-ant-e2e-client-key',
      maxRetries: 0,
      ...options,
    });
  }

  standinURL(name) {
    if (!this.ports[name]) throw new Error(`no stand-in site ${name} in Caddyfile.tmpl`);
    return `http://127.0.0.1:${this.ports[name]}/v1/standin/requests`;
  }

  /** API requests (of any API) the stand-in got since its last reset. */
  async calls(name) {
    const r = await fetch(this.standinURL(name));
    return (await r.json()).requests;
  }

  /** The method, path and headers of the last API request the stand-in got. */
  async lastRequest(name) {
    const r = await fetch(this.standinURL(name).replace(/requests$/, 'last-request'));
    if (!r.ok) throw new Error(`stand-in ${name}: ${r.status} ${await r.text()}`);
    return r.json();
  }

  async resetCalls(...names) {
    await Promise.all(names.map((n) => fetch(this.standinURL(n), { method: 'DELETE' }).then((r) => r.arrayBuffer())));
  }

  async callsOf(names) {
    const counts = await Promise.all(names.map((n) => this.calls(n)));
    return Object.fromEntries(names.map((n, i) => [n, counts[i]]));
  }

  /** A raw chat completion request, for what the SDK hides. */
  post(scenario, body, headers = {}) {
    return fetch(`${this.baseURL(scenario)}/chat/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...headers },
      body: JSON.stringify(body),
    });
  }

  /**
   * Makes sure the breaker scenario's circuit was opened just now by a
   * failure (502), not a while ago: an older opening could turn half-open
   * in the middle of a test.
   */
  async openBreaker(model) {
    const deadline = Date.now() + 5_000;
    for (;;) {
      const r = await this.post('breaker', { model, messages: [{ role: 'user', content: 'open it' }] });
      await r.arrayBuffer();
      if (r.status === 502) return;
      if (r.status !== 503 || Date.now() > deadline) {
        throw new Error(`opening the breaker: got ${r.status}`);
      }
      await new Promise((res) => setTimeout(res, 100));
    }
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
      await this.exit;
      clearTimeout(timer);
    }
    if (!process.env.ARBSTR_E2E_KEEP) {
      fs.rmSync(this.dir, { recursive: true, force: true });
    } else {
      console.log(`# caddy config and log kept in ${this.dir}`);
    }
  }
}
