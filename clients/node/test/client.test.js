'use strict';
// Runs the Node client against a real dspy-pool server (simulated LM, one
// worker) on a free loopback port. Run with `node --test clients/node/test`
// (or `npm test --prefix clients/node`). The server binary is `dspy-pool` on
// the PATH, or DSPY_POOL_BIN.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');

const { DSPyPoolClient, toStruct, fromStruct, status, isRetryable } = require('..');

const SERVER_BIN = process.env.DSPY_POOL_BIN || 'dspy-pool';
const BOOT_TIMEOUT_MS = 60000;
const STOP_TIMEOUT_MS = 8000;

let server;
let serverLog = '';
let client;
let target;
// The server imports the test kinds (tests/fixtures/chaos_kinds.py) from the repository root.
const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');

function exited(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', resolve));
}

async function stopServer() {
  if (!server) return;
  const child = server;
  server = undefined;
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve('timeout'), STOP_TIMEOUT_MS);
  });
  const outcome = await Promise.race([exited(child).then(() => 'exited'), timeout]);
  clearTimeout(timer);
  if (outcome === 'timeout') {
    child.kill('SIGKILL');
    await exited(child);
  }
  // Stray grandchildren may still hold the pipes; do not let them keep node alive.
  child.stdout.destroy();
  child.stderr.destroy();
}

// A crashed test run must not leave the server behind.
process.on('exit', () => {
  if (server && server.exitCode === null) server.kill('SIGKILL');
});

// The port the server bound, from its `server_serving ... port=N` line: it listens on port 0, so no port picked
// here beforehand can be taken by another process (or the server's own children) before the server binds it.
const SERVING_LINE = /server_serving\b.*\bport=(\d+)/;

before(async () => {
  const args = ['serve', '--state', 'memory', '--lm', 'sim', '--workers', '1', '--drain-grace-s', '2', '--listen', '127.0.0.1:0', '--programs', 'tests.fixtures.chaos_kinds'];
  server = spawn(SERVER_BIN, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let announced;
  const serving = new Promise((resolve) => {
    announced = resolve;
  });
  const keep = (chunk) => {
    serverLog = (serverLog + chunk.toString()).slice(-20000);
    const match = SERVING_LINE.exec(serverLog);
    if (match) announced(Number(match[1]));
  };
  server.stdout.on('data', keep);
  server.stderr.on('data', keep);
  const spawnFailed = new Promise((_, reject) => {
    server.once('error', (error) => reject(new Error(`cannot start ${SERVER_BIN}: ${error.message}`)));
    server.once('exit', (code, signal) => reject(new Error(`server exited during boot (code ${code}, signal ${signal}):\n${serverLog}`)));
  });
  let bootTimer;
  const bootTimeout = new Promise((_, reject) => {
    bootTimer = setTimeout(() => reject(new Error(`no server_serving line within ${BOOT_TIMEOUT_MS} ms`)), BOOT_TIMEOUT_MS);
  });
  try {
    const port = await Promise.race([serving, spawnFailed, bootTimeout]);
    target = `127.0.0.1:${port}`;
    client = new DSPyPoolClient(target, { defaultDeadlineMs: 10000 });
    await Promise.race([client.waitForServing({ timeoutMs: BOOT_TIMEOUT_MS }), spawnFailed]);
  } catch (error) {
    await stopServer();
    throw new Error(`${error.message}\n--- server log ---\n${serverLog}`);
  } finally {
    clearTimeout(bootTimer);
  }
  spawnFailed.catch(() => {}); // later exits are reported by the tests themselves
}, { timeout: BOOT_TIMEOUT_MS + 10000 });

after(async () => {
  if (client) client.close();
  await stopServer();
}, { timeout: STOP_TIMEOUT_MS + 5000 });

test('toStruct and fromStruct round-trip JSON-like values', () => {
  const value = { s: 'x', n: 3, f: 1.5, b: false, nil: null, list: [1, 'a', [true], { k: 'v' }], nested: { deep: { x: -2 } } };
  const struct = toStruct(value);
  assert.deepEqual(struct.fields.s, { stringValue: 'x' });
  assert.deepEqual(struct.fields.nil, { nullValue: 'NULL_VALUE' });
  assert.deepEqual(fromStruct(struct), value);
  assert.throws(() => toStruct({ bad: NaN }), TypeError);
  assert.throws(() => toStruct([1, 2]), TypeError);
});

test('values a Struct cannot carry exactly are refused, not sent changed', () => {
  // A Map, Set, RegExp or Buffer became {} or {"0": ...}; a bigint past 2^53 arrived as another number.
  for (const value of [new Map([['a', 1]]), new Set([1]), /x/, Buffer.from('hi'), new Uint8Array([1])]) {
    assert.throws(() => toStruct({ v: value }), /use a plain object/);
  }
  assert.throws(() => toStruct({ big: 2n ** 60n }), /past 2\^53/);
  assert.deepEqual(toStruct({ small: 7n }).fields.small, { numberValue: 7 });
  assert.deepEqual(toStruct(Object.assign(Object.create(null), { k: 'v' })).fields.k, { stringValue: 'v' });
});

test('listPrograms follows every page', async () => {
  // Specs of ~300 KB: 2 MiB pages hold about six; the answer was the first page alone.
  const big = 'x'.repeat(300 * 1024);
  const names = Array.from({ length: 9 }, (_, i) => `node_paged_${i}`);
  for (const name of names) await client.registerProgram({ name, signature: 'question -> answer', instructions: big });
  const listed = (await client.listPrograms()).map((program) => program.spec.name);
  for (const name of names) assert.ok(listed.includes(name), `${name} missing from ${listed.length} listed`);
  for (const name of names) await client.deleteProgram(name);
});

test('health check reports SERVING', async () => {
  assert.equal(await client.health(), 'SERVING');
});

test('registers a program and executes it', async () => {
  const program = await client.registerProgram({
    name: 'node_qa',
    signature: 'context: list[str], question -> answer, confidence: float',
    module: 'predict',
    demos: [{ context: ['c'], question: 'q', answer: 'a', confidence: 0.5 }],
    warmup_inputs: [{ context: ['warm'], question: 'warm-up' }],
  });
  assert.ok(program.version >= 1);
  assert.deepEqual(program.spec.warmup_inputs, [{ context: ['warm'], question: 'warm-up' }]);
  assert.deepEqual(program.input_names, ['context', 'question']);
  assert.deepEqual(program.output_names, ['answer', 'confidence']);
  assert.deepEqual(program.spec.demos, [{ context: ['c'], question: 'q', answer: 'a', confidence: 0.5 }]);

  const again = await client.registerProgram({
    name: 'node_qa',
    signature: 'context: list[str], question -> answer, confidence: float',
    module: 'predict',
    demos: [{ context: ['c'], question: 'q', answer: 'a', confidence: 0.5 }],
    warmup_inputs: [{ context: ['warm'], question: 'warm-up' }],
  });
  assert.equal(again.version, program.version, 'identical content returns the existing version');
  assert.equal(again.created, false);

  const result = await client.execute('node_qa', { context: ['DSPy is a framework'], question: 'What is DSPy?' }, { requestId: 'node-req-1' });
  assert.equal(typeof result.outputs.answer, 'string');
  assert.ok(result.outputs.answer.length > 0);
  assert.equal(typeof result.outputs.confidence, 'number');
  assert.equal(result.program, 'node_qa');
  assert.equal(result.program_version, program.version);
  assert.equal(result.request_id, 'node-req-1');
  assert.equal(result.served_by, 'primary');
  assert.ok(result.worker.pid > 0);
  assert.ok(result.timings.total_ms >= result.timings.execution_ms);
});

test('execute with a mode returns how the version was chosen', async () => {
  await client.registerProgram({ name: 'node_modes', signature: 'question -> answer' });
  const result = await client.execute('node_modes', { question: 'Which mode?' }, { mode: 'traditional', maxOptimizationWaitMs: 0 });
  assert.equal(result.executionMode, 'traditional');
  assert.equal(result.execution_mode, 'traditional');
  assert.equal(result.evaluation, null, 'only evaluation mode runs a second version');
  assert.equal(typeof result.outputs.answer, 'string');
  await assert.rejects(client.execute('node_modes', { question: 'x' }, { mode: 'sometimes' }), (error) => error.code === status.INVALID_ARGUMENT);
});

test('an unknown program fails with NOT_FOUND and an ErrorInfo', async () => {
  await assert.rejects(client.execute('no_such_program', { question: 'x' }), (error) => {
    assert.equal(error.code, status.NOT_FOUND);
    assert.equal(error.codeName, 'NOT_FOUND');
    assert.match(error.details, /no_such_program/);
    assert.equal(error.errorInfo.reason, 'NOT_FOUND');
    assert.equal(error.errorInfo.domain, 'dspy-pool');
    return true;
  });
});

test('missing inputs fail with INVALID_ARGUMENT', async () => {
  await client.registerProgram({ name: 'node_echo', signature: 'question -> answer' });
  await assert.rejects(client.execute('node_echo', {}), (error) => error.code === status.INVALID_ARGUMENT);
});

test('a session keeps its turns until closed', async () => {
  await client.registerProgram({ name: 'node_chat', signature: 'question -> answer' });
  const turns = await client.withSession(async (session) => {
    await session.execute('node_chat', { question: 'first' });
    const second = await session.execute('node_chat', { question: 'second' });
    assert.equal(second.session_id, session.id);
    const stored = await session.get();
    assert.deepEqual(stored.turns.map((turn) => turn.inputs.question), ['first', 'second']);
    return stored.turns.length;
  }, 'node-session-1');
  assert.equal(turns, 2);
  await assert.rejects(client.getSession('node-session-1'), (error) => error.code === status.NOT_FOUND);
});

test('a deadline that cannot be met ends with DEADLINE_EXCEEDED', async () => {
  await client.registerProgram({ name: 'node_echo', signature: 'question -> answer' });
  await assert.rejects(client.execute('node_echo', { question: 'x' }, { deadlineMs: 1 }), (error) => error.code === status.DEADLINE_EXCEEDED);
  // The server cancels the call in the worker; its slot comes back.
  const until = Date.now() + 5000;
  let pool = await client.getPoolStatus();
  while (pool.in_flight > 0 && Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    pool = await client.getPoolStatus();
  }
  assert.equal(pool.in_flight, 0);
});

test('pool status lists the one worker', async () => {
  const pool = await client.getPoolStatus();
  assert.equal(pool.serving, true);
  assert.equal(pool.config.workers, 1);
  assert.equal(pool.workers.length, 1);
});

test('an error that may have run is never retried', () => {
  const crashed = { code: status.UNAVAILABLE, mayHaveRun: true };
  const draining = { code: status.UNAVAILABLE, mayHaveRun: false };
  const queueFull = { code: status.RESOURCE_EXHAUSTED, retryDelayMs: 100, mayHaveRun: false };
  assert.equal(isRetryable(crashed), false);
  assert.equal(isRetryable(draining), true);
  assert.equal(isRetryable(queueFull), true);
  assert.equal(isRetryable({ code: status.RESOURCE_EXHAUSTED, mayHaveRun: false }), false);
});

async function readyWorkers() {
  const pool = await client.getPoolStatus();
  return { pool, ready: pool.workers.filter((worker) => worker.state === 'ready').length };
}

// Last: it kills the only worker, then waits for its replacement.
test('a call that kills its worker is attempted once, even with retries on', async () => {
  await client.registerProgram({ name: 'node_exits', signature: 'code -> never', module: 'exits' });
  const before = (await client.getPoolStatus()).worker_restarts;
  const retrying = new DSPyPoolClient(target, { defaultDeadlineMs: 20000, retries: 3, retryBackoffMs: 10 });
  try {
    await assert.rejects(retrying.execute('node_exits', { code: 3 }), (error) => {
      assert.equal(error.code, status.UNAVAILABLE);
      assert.equal(error.errorInfo.reason, 'WORKER_CRASHED');
      assert.equal(error.errorInfo.metadata.may_have_run, 'true');
      assert.equal(error.mayHaveRun, true);
      return true;
    });
  } finally {
    retrying.close();
  }
  const until = Date.now() + 20000;
  let state = await readyWorkers();
  while (state.ready < 1 && Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    state = await readyWorkers();
  }
  assert.equal(state.ready, 1, 'the replacement worker came up');
  assert.equal(state.pool.worker_restarts - before, 1, 'one worker died: the call was not sent again');
});
