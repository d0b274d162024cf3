'use strict';
/**
 * Node.js client for the dspy-pool gRPC sidecar.
 *
 * The service definition is loaded at run time from the repository's
 * proto/ directory (../../proto, or DSPY_POOL_PROTO_DIR) with
 * @grpc/proto-loader; nothing is generated.
 *
 * Well-known types: `google/protobuf/struct.proto`, `timestamp.proto`,
 * `duration.proto` and `any.proto` are resolved by protobufjs (a dependency of
 * proto-loader), which ships them built in, so no google/protobuf/*.proto
 * files are needed on disk and loading works offline after `npm ci`. The
 * health service and google.rpc error details, which no npm dependency ships
 * as .proto files, are kept in ./proto.
 *
 * Struct <-> plain object
 * -----------------------
 * Inputs and outputs are google.protobuf.Struct. With proto-loader a Struct is
 * `{fields: {name: {stringValue: 'x'}}}`; this client converts for you:
 *
 *   JS value            -> google.protobuf.Value  -> back to JS
 *   string                 stringValue              string
 *   number (finite)        numberValue (double)     number
 *   boolean                boolValue                boolean
 *   null / undefined       nullValue                null
 *   Array                  listValue                Array
 *   plain object           structValue              plain object
 *   Date                   stringValue (ISO 8601)   string
 *   bigint                 numberValue              number (precision above 2**53 is lost)
 *
 * Every number is a double on the wire, so integers above 2**53 lose
 * precision; NaN, Infinity, functions and symbols are rejected with a
 * TypeError. Use `toStruct` / `fromStruct` directly when you build requests
 * by hand.
 *
 * Deadlines: every call takes `{deadlineMs}` (default: the client's
 * `defaultDeadlineMs`, 30 s, the server's default). The deadline bounds queue
 * wait plus execution on the server; when it passes the call fails with
 * DEADLINE_EXCEEDED.
 *
 * Errors: a failed call rejects with the grpc-js ServiceError (`code`,
 * `details`, `metadata`) extended with `codeName`, `mayHaveRun` and, when the
 * server sent them, `errorInfo` ({reason, domain, metadata}), `retryDelayMs`
 * and `debugInfo` (the worker's traceback). `errorInfo.metadata` carries the
 * error `kind` and `may_have_run` / `transient` ("true" or "false").
 *
 * Retries (`retries: N`) never resend a call whose ErrorInfo says
 * `may_have_run: "true"` (its worker died or hung while running it, its
 * deadline passed mid-run): it may have run, and a call that killed its
 * worker would kill the next one too.
 */

const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = process.env.DSPY_POOL_PROTO_DIR || path.resolve(__dirname, '..', '..', 'proto');
const LOCAL_PROTO_DIR = path.join(__dirname, 'proto');

const LOADER_OPTIONS = {
  keepCase: true, // field names exactly as in the .proto (snake_case)
  longs: Number, // int64 counters (tokens, rss_bytes) as numbers
  enums: String,
  defaults: true,
  oneofs: true, // Value.kind tells which member is set
  includeDirs: [PROTO_DIR, LOCAL_PROTO_DIR],
};

const packageDefinition = protoLoader.loadSync(
  ['dspy_pool/v1/dspy_pool.proto', 'grpc/health/v1/health.proto', 'google/rpc/status.proto', 'google/rpc/error_details.proto'],
  LOADER_OPTIONS,
);
const loaded = grpc.loadPackageDefinition(packageDefinition);
const DSPyPoolService = loaded.dspy_pool.v1.DSPyPool;
const HealthService = loaded.grpc.health.v1.Health;

const DEFAULT_TARGET = '127.0.0.1:50051';
const DEFAULT_DEADLINE_MS = 30000;
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

// ---- Struct <-> plain object --------------------------------------------

function toValue(value) {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  switch (typeof value) {
    case 'string':
      return { stringValue: value };
    case 'boolean':
      return { boolValue: value };
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError(`cannot send ${value} in a Struct (not finite)`);
      return { numberValue: value };
    case 'bigint':
      // A Struct number is a double: past 2^53 it would arrive as another number.
      if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < -BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new TypeError(`cannot send ${value} in a Struct exactly (past 2^53); send it as a string`);
      }
      return { numberValue: Number(value) };
    case 'object':
      if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
      if (value instanceof Date) return { stringValue: value.toISOString() };
      return { structValue: toStruct(value) };
    default:
      throw new TypeError(`cannot send a ${typeof value} in a Struct`);
  }
}

/** A plain object -> google.protobuf.Struct as proto-loader expects it. */
function toStruct(object) {
  if (object === null || object === undefined) return { fields: {} };
  if (typeof object !== 'object' || Array.isArray(object)) {
    throw new TypeError('a Struct must be built from a plain object');
  }
  const prototype = Object.getPrototypeOf(object);
  if (prototype !== Object.prototype && prototype !== null) {
    // A Map, Set, Buffer or typed array has no enumerable fields of its own to send: it became {} or {"0": ...}.
    throw new TypeError(`cannot send a ${object.constructor?.name ?? 'non-plain object'} in a Struct: use a plain object`);
  }
  const fields = {};
  for (const [key, value] of Object.entries(object)) fields[key] = toValue(value);
  return { fields };
}

function fromValue(value) {
  if (value === null || value === undefined) return null;
  // With `oneofs: true` proto-loader names the member that is set in `kind`.
  const kind = value.kind || ['stringValue', 'numberValue', 'boolValue', 'structValue', 'listValue', 'nullValue'].find((k) => value[k] !== undefined && value[k] !== null);
  switch (kind) {
    case 'stringValue':
      return value.stringValue;
    case 'numberValue':
      return value.numberValue;
    case 'boolValue':
      return value.boolValue;
    case 'structValue':
      return fromStruct(value.structValue);
    case 'listValue':
      return ((value.listValue && value.listValue.values) || []).map(fromValue);
    default:
      return null;
  }
}

/** google.protobuf.Struct as proto-loader returns it -> a plain object. */
function fromStruct(struct) {
  const out = {};
  if (!struct || !struct.fields) return out;
  for (const [key, value] of Object.entries(struct.fields)) out[key] = fromValue(value);
  return out;
}

// ---- Program specs ----------------------------------------------------------

function specToProto(spec) {
  const out = { ...spec };
  if (spec.demos) out.demos = spec.demos.map(toStruct);
  if (spec.warmup_inputs) out.warmup_inputs = spec.warmup_inputs.map(toStruct);
  if (spec.module_options) out.module_options = toStruct(spec.module_options);
  if (spec.fallback && spec.fallback.static_outputs) {
    out.fallback = { ...spec.fallback, static_outputs: toStruct(spec.fallback.static_outputs) };
  }
  return out;
}

function specFromProto(spec) {
  if (!spec) return spec;
  const out = {
    ...spec,
    demos: (spec.demos || []).map(fromStruct),
    warmup_inputs: (spec.warmup_inputs || []).map(fromStruct),
    module_options: fromStruct(spec.module_options),
  };
  if (spec.fallback) out.fallback = { ...spec.fallback, static_outputs: fromStruct(spec.fallback.static_outputs) };
  return out;
}

function programFromProto(program) {
  return { ...program, spec: specFromProto(program.spec) };
}

function turnFromProto(turn) {
  return { ...turn, inputs: fromStruct(turn.inputs), outputs: fromStruct(turn.outputs) };
}

// ---- Errors -------------------------------------------------------------

function typeFor(name) {
  return packageDefinition[name];
}

function durationMs(duration) {
  if (!duration) return 0;
  return Number(duration.seconds || 0) * 1000 + Math.round(Number(duration.nanos || 0) / 1e6);
}

/**
 * Decodes the google.rpc.Status a dspy-pool error carries in its
 * `grpc-status-details-bin` trailer. Returns {errorInfo, retryDelayMs,
 * debugInfo} (each undefined when absent), or null when there is no trailer.
 */
function decodeStatusDetails(error) {
  const raw = error && error.metadata && error.metadata.get('grpc-status-details-bin');
  if (!raw || raw.length === 0) return null;
  const status = typeFor('google.rpc.Status').deserialize(Buffer.from(raw[0]));
  const result = { errorInfo: undefined, retryDelayMs: undefined, debugInfo: undefined };
  for (const any of status.details || []) {
    const typeName = String(any.type_url).split('/').pop();
    const type = typeFor(typeName);
    if (!type) continue;
    const message = type.deserialize(Buffer.from(any.value));
    if (typeName === 'google.rpc.ErrorInfo') result.errorInfo = message;
    else if (typeName === 'google.rpc.RetryInfo') result.retryDelayMs = durationMs(message.retry_delay);
    else if (typeName === 'google.rpc.DebugInfo') result.debugInfo = message.detail;
  }
  return result;
}

function enrichError(error) {
  if (!error || typeof error.code !== 'number') return error;
  error.codeName = CODE_NAMES[error.code] || String(error.code);
  try {
    Object.assign(error, decodeStatusDetails(error) || {});
  } catch (_) {
    // A trailer we cannot read must not hide the original error.
  }
  const info = error.errorInfo && error.errorInfo.metadata;
  error.mayHaveRun = Boolean(info && info.may_have_run === 'true');
  return error;
}

/**
 * Whether a failed call may be sent again: UNAVAILABLE, or RESOURCE_EXHAUSTED
 * with a RetryInfo (queue full), and never when the server says the call may
 * have run.
 */
function isRetryable(error) {
  if (!error || error.mayHaveRun) return false;
  return error.code === grpc.status.UNAVAILABLE || (error.code === grpc.status.RESOURCE_EXHAUSTED && error.retryDelayMs !== undefined);
}

// ---- Client -------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class DSPyPoolClient {
  /**
   * @param {string} [target] "HOST:PORT" or "unix:///path.sock"; default 127.0.0.1:50051.
   * @param {object} [options]
   * @param {number} [options.defaultDeadlineMs=30000] deadline for calls that set none.
   * @param {number} [options.retries=0] extra attempts on UNAVAILABLE, and on
   *   RESOURCE_EXHAUSTED when the server sent a RetryInfo (waiting at least
   *   the delay it suggests), unless the server's ErrorInfo says
   *   `may_have_run: "true"` (a worker died or hung running the call): those
   *   are never resent, so a retry does not run a program twice.
   * @param {number} [options.retryBackoffMs=100] first backoff; doubles per attempt.
   * @param {grpc.ChannelCredentials} [options.credentials] default: insecure (loopback sidecar).
   * @param {object} [options.channelOptions] grpc-js channel options.
   */
  constructor(target = DEFAULT_TARGET, options = {}) {
    this.target = target;
    this.defaultDeadlineMs = options.defaultDeadlineMs ?? DEFAULT_DEADLINE_MS;
    this.retries = options.retries ?? 0;
    this.retryBackoffMs = options.retryBackoffMs ?? 100;
    const credentials = options.credentials || grpc.credentials.createInsecure();
    const channelOptions = {
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
      ...(options.channelOptions || {}),
    };
    this.stub = new DSPyPoolService(target, credentials, channelOptions);
    // The health stub shares the channel of the main stub.
    this.healthStub = new HealthService(target, credentials, { ...channelOptions, channelOverride: this.stub.getChannel() });
  }

  _unary(stub, method, request, opts = {}) {
    const deadlineMs = opts.deadlineMs ?? this.defaultDeadlineMs;
    const metadata = new grpc.Metadata();
    for (const [key, value] of Object.entries(opts.metadata || {})) metadata.set(key, value);
    return new Promise((resolve, reject) => {
      stub[method](request, metadata, { deadline: Date.now() + deadlineMs }, (error, response) => {
        if (error) reject(enrichError(error));
        else resolve(response);
      });
    });
  }

  async _call(method, request, opts = {}) {
    const retries = opts.retries ?? this.retries;
    let backoff = this.retryBackoffMs;
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this._unary(this.stub, method, request, opts);
      } catch (error) {
        if (!isRetryable(error) || attempt >= retries) throw error;
        await sleep(Math.max(backoff, error.retryDelayMs || 0));
        backoff *= 2;
      }
    }
  }

  /** Registers a program spec (plain object; demos and module_options as plain objects). */
  async registerProgram(spec, opts) {
    return programFromProto(await this._call('RegisterProgram', { spec: specToProto(spec) }, opts));
  }

  async getProgram(name, version = 0, opts) {
    return programFromProto(await this._call('GetProgram', { name, version }, opts));
  }

  async listPrograms({ allVersions = false } = {}, opts) {
    // Every page: the server pages its answer (at most 1,000 programs or 2 MiB each), so one page may be a part.
    const programs = [];
    let pageToken = '';
    do {
      const response = await this._call('ListPrograms', { all_versions: allVersions, page_token: pageToken }, opts);
      programs.push(...response.programs.map(programFromProto));
      pageToken = response.next_page_token;
    } while (pageToken);
    return programs;
  }

  /** Deletes one version, or all when version is 0; resolves to the deleted version numbers. */
  async deleteProgram(name, version = 0, opts) {
    return (await this._call('DeleteProgram', { name, version }, opts)).deleted_versions;
  }

  /**
   * Runs a program. `inputs` is a plain object; the result's `outputs` is a
   * plain object too, the rest is the ExecuteResponse as proto-loader gives it
   * (program_version, request_id, worker {id, pid}, timings, usage, served_by,
   * fallback_reason, session_id, execution_mode), plus:
   *
   * - `executionMode`: how the version was chosen: 'traditional', 'optimized',
   *   'hybrid:optimized', 'hybrid:traditional', 'evaluation', or 'version'
   *   (the call named one);
   * - `evaluation`: in evaluation mode, the other version's answer
   *   ({outputs (a plain object), version, latency_ms, score, error}), else null.
   *
   * @param {string} program
   * @param {object} inputs
   * @param {object} [opts] {version, sessionId, requestId, mode, maxOptimizationWaitMs, deadlineMs, metadata, retries}
   *   `mode` ('traditional', 'optimized', 'hybrid', 'evaluation') overrides the
   *   program's execution policy for this call (ignored when `version` is set);
   *   `maxOptimizationWaitMs`: in optimized mode while the first optimization
   *   still runs, wait this long for its version, then run the base version.
   */
  async execute(program, inputs, opts = {}) {
    const request = {
      program,
      version: opts.version || 0,
      inputs: toStruct(inputs),
      session_id: opts.sessionId || '',
      request_id: opts.requestId || '',
      mode: opts.mode || '',
      max_optimization_wait_ms: opts.maxOptimizationWaitMs || 0,
    };
    const response = await this._call('Execute', request, opts);
    const evaluation = response.evaluation ? { ...response.evaluation, outputs: fromStruct(response.evaluation.outputs) } : null;
    return { ...response, outputs: fromStruct(response.outputs), executionMode: response.execution_mode || '', evaluation };
  }

  async getSession(sessionId, opts) {
    const session = await this._call('GetSession', { session_id: sessionId }, opts);
    return { ...session, turns: session.turns.map(turnFromProto) };
  }

  /** Closes a session; resolves to the number of turns it held. */
  async closeSession(sessionId, opts) {
    return (await this._call('CloseSession', { session_id: sessionId }, opts)).turns;
  }

  /** A handle on one conversation: {id, execute, get, close}. */
  session(sessionId = crypto.randomUUID()) {
    return {
      id: sessionId,
      execute: (program, inputs, opts = {}) => this.execute(program, inputs, { ...opts, sessionId }),
      get: (opts) => this.getSession(sessionId, opts),
      close: (opts) => this.closeSession(sessionId, opts),
    };
  }

  /** Runs `fn(session)` and closes the session afterwards, even when fn throws. */
  async withSession(fn, sessionId) {
    const session = this.session(sessionId);
    try {
      return await fn(session);
    } finally {
      await session.close().catch(() => {});
    }
  }

  async getPoolStatus(opts) {
    return this._call('GetPoolStatus', {}, opts);
  }

  /** grpc.health.v1 Check; resolves to "SERVING", "NOT_SERVING", ... */
  async health(service = '', opts = {}) {
    const response = await this._unary(this.healthStub, 'Check', { service }, { deadlineMs: 2000, ...opts });
    return response.status;
  }

  /** Polls the health service until SERVING; rejects after timeoutMs. */
  async waitForServing({ timeoutMs = 60000, intervalMs = 100 } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last;
    while (Date.now() < deadline) {
      try {
        last = await this.health('', { deadlineMs: Math.min(2000, Math.max(1, deadline - Date.now())) });
        if (last === 'SERVING') return;
      } catch (error) {
        last = error.codeName || error.message;
      }
      await sleep(intervalMs);
    }
    throw new Error(`dspy-pool at ${this.target} not SERVING after ${timeoutMs} ms (last: ${last})`);
  }

  close() {
    // Closes the one channel both stubs share.
    this.stub.close();
  }
}

module.exports = {
  DSPyPoolClient,
  toStruct,
  fromStruct,
  toValue,
  fromValue,
  decodeStatusDetails,
  isRetryable,
  status: grpc.status,
  grpc,
  packageDefinition,
};
