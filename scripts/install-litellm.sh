#!/usr/bin/env bash
# Installs LiteLLM's proxy into its own virtual environment (default: .venv-litellm/ at the repo root,
# override with LITELLM_VENV), for bench/gateway.py to compare Corral's gateway against. Corral never
# imports LiteLLM: bench/litellm_proxy.py starts it as a separate process from this venv.
#
# Virtual keys need LiteLLM's database, which it reaches through Prisma Client Python. That client runs
# Prisma's native query engine, and Prisma's CLI wants its native schema engine; both come only from
# Prisma's CDN, which this machine cannot reach (the registries it reaches carry no build of them).
# So, all from the npm registry:
#   - the Prisma CLI (for `prisma generate`) installed with --ignore-scripts, so its postinstall
#     doesn't try the CDN;
#   - a stand-in for the query engine (written below into the venv) that serves the binary engine's
#     HTTP API on @prisma/query-engine-wasm, Prisma's query engine compiled to WebAssembly, with
#     node-postgres underneath;
#   - a stub schema engine that only answers --version: migrations are not run through Prisma at all,
#     bench/litellm_proxy.py applies LiteLLM's own migration SQL with psql and starts the proxy with
#     DISABLE_SCHEMA_UPDATE=true.
# Needs node (>= 18) and npm on PATH, as this machine kind has.
#
# Idempotent: a stamp file in the venv records the pins and this script's checksum; re-running
# unchanged returns at once. Delete the venv (or the stamp) to reinstall.
#
# Environment:
#   LITELLM_VENV   where to create the venv (default: <repo>/.venv-litellm)
#   PYTHON         the interpreter to build the venv from (default: python3; LiteLLM needs 3.10-3.13)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${LITELLM_VENV:-$ROOT/.venv-litellm}"
PYTHON="${PYTHON:-python3}"

# Pinned exactly. 1.108.5 is the newest LiteLLM whose own exact pins for the proxy extra
# (litellm-proxy-extras==0.4.110, litellm-enterprise==0.1.79.post1) the package index here serves;
# 1.108.6 and later pin releases it doesn't have, and 1.110 needs a `litellm-proxy` package it doesn't
# have at all. LiteLLM's proxy extra leaves out prisma, which a database needs; 0.11.0 is the release
# LiteLLM's requirements.txt (what its Docker image installs) pins, and the one its code is written
# against (it reaches into the client's private `_Prisma__engine`, which later releases renamed). The
# rest are what these resolved to when this was written, for the packages on the request path;
# uvicorn[standard] adds httptools, as Corral's uvicorn has, so both servers parse HTTP alike.
# OpenTelemetry's SDK (at the pins of LiteLLM's `proxy-runtime` extra; its image carries it too) is there
# because the proxy imports it on every request to route trace spans: without it that import fails,
# isn't cached, and is retried by each request (~2% of the proxy's CPU).
LITELLM_VERSION="1.108.5"
PYTHON_PINS=(
    "litellm[proxy]==$LITELLM_VERSION"
    litellm-proxy-extras==0.4.110
    litellm-enterprise==0.1.79.post1
    prisma==0.11.0
    "uvicorn[standard]==0.54.0"
    httptools==0.9.0
    uvloop==0.23.0
    fastapi==0.165.0
    starlette==1.10.0
    pydantic==2.14.4
    pydantic-core==2.50.5
    orjson==3.13.0
    httpx==0.28.1
    httpcore==1.0.9
    aiohttp==3.14.5
    openai==3.57.0
    psycopg==3.3.9
    psycopg-binary==3.3.9
    opentelemetry-api==1.45.1
    opentelemetry-sdk==1.45.1
)
# prisma==0.11.0 drives Prisma CLI 5.4.2, whose engines are commit ac9d7041. Prisma published no wasm
# build of the query engine that early, so the stand-in runs 5.17.0's (commit 393aa359) with the driver
# adapter released beside it. What LiteLLM sends through the client (startup, key creation, key lookups,
# spend writes) was checked to work against it; the stand-in answers --version with the commit the client
# checks for.
PRISMA_CLI_ENGINE_COMMIT="ac9d7041ed77bcc8a8dbd2ab6616b39013829574"
WASM_ENGINE_COMMIT="393aa359c9ad4a4bb28630fb5613f9c281cde053"
NPM_PINS=(
    prisma@5.4.2
    "@prisma/query-engine-wasm@5.17.0-31.$WASM_ENGINE_COMMIT"
    @prisma/adapter-pg@5.17.0
    @prisma/driver-adapter-utils@5.17.0
    pg@8.23.1
)

ENGINES="$VENV/prisma-engines"   # PRISMA_BINARY_CACHE_DIR: where prisma-client-py looks for its CLI
STAMP="$VENV/.corral-litellm"
STAMP_KEY="${PYTHON_PINS[*]} ${NPM_PINS[*]} script=$(sha256sum "$0" | cut -c1-16)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_KEY" ] && [ -x "$VENV/bin/litellm" ]; then
    echo "LiteLLM $LITELLM_VERSION is already installed in $VENV"
    exit 0
fi

started=$SECONDS
"$PYTHON" - <<'PY'
import sys
if not (3, 10) <= sys.version_info[:2] <= (3, 13):
    sys.exit(f"LiteLLM needs Python 3.10 to 3.13; {sys.executable} is {sys.version.split()[0]} (set PYTHON)")
PY
for tool in node npm; do
    command -v "$tool" >/dev/null \
        || { echo "$tool is needed on PATH (Prisma's CLI and the engine stand-in run on Node)" >&2; exit 2; }
done
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
    || { echo "node >= 18 is needed, found $(node --version)" >&2; exit 2; }

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
rm -f "$STAMP"
site_packages="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# `prisma generate` writes the client into the prisma package itself, and one release's generated modules
# break another's import: start that package afresh.
"$PY" -m pip uninstall --quiet --yes prisma >/dev/null 2>&1 || true
rm -rf "$site_packages/prisma"
"$PY" -m pip install --quiet "${PYTHON_PINS[@]}"

# LiteLLM 1.82.7 and 1.82.8 were published with a credential stealer started from a .pth file.
if compgen -G "$site_packages/litellm*.pth" >/dev/null; then
    echo "a litellm*.pth file is in the venv: refusing to go on (see LiteLLM's March 2026 security notice)" >&2
    exit 1
fi

mkdir -p "$ENGINES"
cat >"$ENGINES/package.json" <<'JSON'
{
  "name": "prisma-binaries",
  "version": "1.0.0",
  "private": true,
  "description": "Prisma CLI for Prisma Client Python, and the wasm query engine standing in for the native one",
  "main": "node_modules/prisma/build/index.js"
}
JSON
# --ignore-scripts: @prisma/engines' postinstall would fetch the native engines from Prisma's CDN.
(cd "$ENGINES" && npm install --ignore-scripts --no-audit --no-fund --save-exact --loglevel=error "${NPM_PINS[@]}")

cat >"$ENGINES/schema-engine" <<SH
#!/bin/sh
# Stub: Prisma's CLI insists on a schema engine being present, even for \`generate\`. Migrations are
# applied with psql by bench/litellm_proxy.py instead.
case "\$1" in --version|-V) echo "schema-engine-cli $PRISMA_CLI_ENGINE_COMMIT"; exit 0;; esac
echo "schema-engine: stub, the native schema engine is not installed (see scripts/install-litellm.sh)" >&2
exit 1
SH

cat >"$ENGINES/query-engine" <<'JS'
#!/usr/bin/env node
// Stand-in for Prisma's native `query-engine` binary, which only Prisma's CDN serves. Prisma Client
// Python (which LiteLLM uses) spawns it as `query-engine -p PORT ...` and speaks HTTP to it with
// Prisma's GraphQL protocol. This serves the same HTTP API on top of @prisma/query-engine-wasm (the
// query engine compiled to WebAssembly, from npm) and node-postgres through @prisma/adapter-pg. The
// wasm engine only speaks Prisma's JSON protocol, so requests are translated from the small GraphQL
// subset that prisma-client-py's query builder emits, and the JSON protocol's output (tagged values
// such as {"$type": "DateTime", "value": ...}, raw results as columns/types/rows) is turned back into
// what the GraphQL protocol returned.
'use strict';

const fs = require('node:fs');
const http = require('node:http');

// The commit prisma-client-py checks `--version` against (filled in by scripts/install-litellm.sh).
const CLIENT_ENGINE_COMMIT = '@CLIENT_ENGINE_COMMIT@';

if (process.argv.includes('--version') || process.argv.includes('-V')) {
  process.stdout.write(`query-engine ${CLIENT_ENGINE_COMMIT}\n`);
  process.exit(0);
}

// ---------------------------------------------------------------- GraphQL subset -> JSON protocol

function tokenize(text) {
  const tokens = [];
  const re = /\s+|,|([{}()\[\]:])|("(?:[^"\\]|\\.)*")|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|([_A-Za-z][_0-9A-Za-z]*)/gy;
  let match;
  while (re.lastIndex < text.length) {
    const at = re.lastIndex;
    match = re.exec(text);
    if (match === null) throw new Error(`cannot parse query at offset ${at}: ${text.slice(at, at + 40)}`);
    if (match[1]) tokens.push({ kind: match[1] });
    else if (match[2]) tokens.push({ kind: 'value', value: JSON.parse(match[2]) });
    else if (match[3]) tokens.push({ kind: 'value', value: Number(match[3]) });
    else if (match[4]) {
      const word = match[4];
      if (word === 'true' || word === 'false') tokens.push({ kind: 'value', value: word === 'true' });
      else if (word === 'null') tokens.push({ kind: 'value', value: null });
      else tokens.push({ kind: 'name', value: word });
    }
  }
  return tokens;
}

class Parser {
  constructor(text) {
    this.tokens = tokenize(text);
    this.at = 0;
  }
  peek() {
    return this.tokens[this.at];
  }
  take(kind) {
    const token = this.tokens[this.at++];
    if (!token || (kind && token.kind !== kind)) {
      throw new Error(`expected ${kind}, got ${token ? token.kind : 'end of query'}`);
    }
    return token;
  }
  value() {
    const token = this.take();
    if (token.kind === 'value') return token.value;
    if (token.kind === 'name') return token.value; // a bare enum literal
    if (token.kind === '{') {
      const object = {};
      while (this.peek().kind !== '}') {
        const key = this.take('name').value;
        this.take(':');
        object[key] = this.value();
      }
      this.take('}');
      return object;
    }
    if (token.kind === '[') {
      const list = [];
      while (this.peek().kind !== ']') list.push(this.value());
      this.take(']');
      return list;
    }
    throw new Error(`unexpected ${token.kind}`);
  }
  args() {
    const args = {};
    this.take('(');
    while (this.peek().kind !== ')') {
      const key = this.take('name').value;
      this.take(':');
      args[key] = this.value();
    }
    this.take(')');
    return args;
  }
  selection() {
    const selection = {};
    this.take('{');
    while (this.peek().kind !== '}') {
      const name = this.take('name').value;
      let args;
      let nested;
      if (this.peek().kind === '(') args = this.args();
      if (this.peek().kind === '{') nested = this.selection();
      if (args === undefined && nested === undefined) selection[name] = true;
      else selection[name] = { ...(args ? { arguments: args } : {}), selection: nested || {} };
    }
    this.take('}');
    return selection;
  }
}

const MODEL_ACTIONS = [
  // longest prefixes first
  ['findUnique', 'OrThrow', 'findUniqueOrThrow'],
  ['findFirst', 'OrThrow', 'findFirstOrThrow'],
  ['findUnique', '', 'findUnique'],
  ['findFirst', '', 'findFirst'],
  ['findMany', '', 'findMany'],
  ['createOne', '', 'createOne'],
  ['createMany', '', 'createMany'],
  ['updateOne', '', 'updateOne'],
  ['updateMany', '', 'updateMany'],
  ['deleteOne', '', 'deleteOne'],
  ['deleteMany', '', 'deleteMany'],
  ['upsertOne', '', 'upsertOne'],
  ['aggregate', '', 'aggregate'],
  ['groupBy', '', 'groupBy'],
];

function operationToJson(field) {
  if (field === 'queryRaw' || field === 'executeRaw') return { action: field };
  for (const [prefix, suffix, action] of MODEL_ACTIONS) {
    if (field.startsWith(prefix) && field.endsWith(suffix) && field.length > prefix.length + suffix.length) {
      return { modelName: field.slice(prefix.length, field.length - suffix.length), action };
    }
  }
  throw new Error(`unsupported operation ${field}`);
}

// The JSON protocol reads a plain string given for a Json field as a JSON string value, where the
// GraphQL protocol read it as JSON text: such values are tagged, using the fields each model declares.
function schemaFields(datamodel) {
  const models = {};
  for (const block of datamodel.matchAll(/^model\s+(\w+)\s*{([\s\S]*?)^}/gm)) {
    const fields = {};
    for (const line of block[2].split('\n')) {
      const match = /^\s*(\w+)\s+(\w+)/.exec(line);
      if (match) fields[match[1]] = match[2];
    }
    models[block[1]] = fields;
  }
  return models;
}

let MODELS = {};

function tagJson(value) {
  if (typeof value === 'string') return { $type: 'Json', value };
  if (Array.isArray(value)) return value.map(tagJson);
  if (value !== null && typeof value === 'object') {
    const out = {};
    for (const [key, inner] of Object.entries(value)) {
      out[key] = ['equals', 'not', 'set'].includes(key) ? tagJson(inner) : inner;
    }
    return out;
  }
  return value;
}

function tagValue(value, model) {
  if (Array.isArray(value)) return value.map((item) => tagValue(item, model));
  if (value === null || typeof value !== 'object') return value;
  const fields = MODELS[model] || {};
  const out = {};
  for (const [key, inner] of Object.entries(value)) {
    const type = fields[key];
    if (type === 'Json') out[key] = tagJson(inner);
    else if (type && MODELS[type]) out[key] = tagValue(inner, type);
    else out[key] = tagValue(inner, model); // an operation (create, where, AND, ...) on the same model
  }
  return out;
}

function tagArguments(args, model) {
  const out = {};
  for (const [key, value] of Object.entries(args)) out[key] = tagValue(value, model);
  return out;
}

function tagSelection(selection, model) {
  const fields = MODELS[model] || {};
  for (const [key, inner] of Object.entries(selection)) {
    const related = MODELS[fields[key]] ? fields[key] : undefined;
    if (related && inner !== true) {
      if (inner.arguments) inner.arguments = tagArguments(inner.arguments, related);
      tagSelection(inner.selection, related);
    }
  }
}

function graphqlToJson(query) {
  const parser = new Parser(query);
  parser.take('name'); // query | mutation
  parser.take('{');
  let field = parser.take('name').value;
  if (parser.peek().kind === ':') {
    parser.take(':');
    field = parser.take('name').value; // `result: findUniqueUser`
  }
  const args = parser.peek().kind === '(' ? parser.args() : {};
  const selection = parser.peek().kind === '{' ? parser.selection() : {};
  parser.take('}');
  const operation = operationToJson(field);
  if (operation.modelName) {
    tagSelection(selection, operation.modelName);
    return { ...operation, query: { arguments: tagArguments(args, operation.modelName), selection } };
  }
  return { ...operation, query: { arguments: args, selection } };
}

function untag(value) {
  if (Array.isArray(value)) return value.map(untag);
  if (value !== null && typeof value === 'object') {
    if (typeof value.$type === 'string' && 'value' in value && Object.keys(value).length === 2) {
      return value.value;
    }
    const out = {};
    for (const key of Object.keys(value)) out[key] = untag(value[key]);
    return out;
  }
  return value;
}

// Raw query results come back as {columns, types, rows}; prisma-client-py 0.11 reads the shape the engine
// gave before Prisma 5.9, one object per row of {column: {prisma__type, prisma__value}}.
function typedValue(type, value) {
  if (value === null || value === undefined) return { prisma__type: 'null', prisma__value: null };
  if (type.endsWith('-array') && Array.isArray(value)) {
    const element = type.slice(0, -'-array'.length);
    return { prisma__type: 'array', prisma__value: value.map((item) => typedValue(element, item)) };
  }
  return { prisma__type: type, prisma__value: value };
}

function rawRows(raw) {
  if (!raw || !Array.isArray(raw.columns) || !Array.isArray(raw.rows)) return raw;
  return raw.rows.map((row) => {
    const object = {};
    raw.columns.forEach((column, index) => {
      object[column] = typedValue(raw.types[index], row[index]);
    });
    return object;
  });
}

function graphqlShaped(result, request) {
  if (result && result.data && typeof result.data === 'object') {
    const keys = Object.keys(result.data);
    if (keys.length === 1) {
      const value = result.data[keys[0]];
      return { data: { result: request.action === 'queryRaw' ? rawRows(value) : untag(value) } };
    }
  }
  return result;
}

function translateRequest(body) {
  if (Array.isArray(body.batch)) {
    const json = { batch: body.batch.map((item) => graphqlToJson(item.query)) };
    if (body.transaction) json.transaction = { isolationLevel: body.isolation_level || null };
    return json;
  }
  return graphqlToJson(body.query);
}

function translateResponse(text, request) {
  const result = JSON.parse(text);
  if (Array.isArray(result.batchResult)) {
    const batchResult = result.batchResult.map((item, index) => graphqlShaped(item, request.batch[index]));
    return { ...result, batchResult };
  }
  return graphqlShaped(result, request);
}

// ---------------------------------------------------------------- engine

function argValue(flag) {
  const at = process.argv.indexOf(flag);
  return at >= 0 ? process.argv[at + 1] : undefined;
}

function databaseUrl(datamodel) {
  if (process.env.OVERWRITE_DATASOURCES) {
    const overrides = JSON.parse(process.env.OVERWRITE_DATASOURCES);
    if (overrides.length > 0 && overrides[0].url) return overrides[0].url;
  }
  const block = /datasource\s+\w+\s*{([^}]*)}/.exec(datamodel);
  const url = block && /url\s*=\s*(?:env\(\s*"([^"]+)"\s*\)|"([^"]+)")/.exec(block[1]);
  if (!url) throw new Error('no datasource url in the schema');
  const resolved = url[1] ? process.env[url[1]] : url[2];
  if (!resolved) throw new Error(`environment variable ${url[1]} is not set`);
  return resolved;
}

// Prisma's own URL parameters mean nothing to node-postgres; the pool size and schema carry over.
function poolConfig(url) {
  const parsed = new URL(url.replace(/^postgres(ql)?:/, 'http:'));
  const params = parsed.searchParams;
  const config = { max: Number(params.get('connection_limit') || 10) };
  const schema = params.get('schema') || undefined;
  const options = params.get('options');
  for (const name of [...params.keys()]) {
    if (!['sslmode', 'application_name', 'options'].includes(name)) params.delete(name);
  }
  config.connectionString = parsed.toString().replace(/^http:/, 'postgresql:');
  if (options) config.options = options;
  return { config, schema };
}

// node-postgres hands over, and @prisma/adapter-pg 5.17 refuses, some catalog types that the native engine
// reads as text (LiteLLM's startup queries pg_views for `name` columns, and aggregates them into name[]).
const TEXT = 25;
const TEXT_ARRAY = 1009;
// "char", name, regproc, xid, unknown, regclass, regtype, void
const READ_AS_TEXT = new Set([18, 19, 24, 28, 705, 2205, 2206, 2278]);
const READ_AS_TEXT_ARRAY = new Set([1003, 2210, 2211]); // name[] regclass[] regtype[]

function retypeCatalogColumns(result) {
  if (Array.isArray(result)) return result.map(retypeCatalogColumns);
  if (!result || !Array.isArray(result.fields)) return result;
  const parseTextArray = require('pg').types.getTypeParser(TEXT_ARRAY, 'text');
  result.fields.forEach((field, index) => {
    if (READ_AS_TEXT.has(field.dataTypeID)) {
      field.dataTypeID = TEXT;
    } else if (READ_AS_TEXT_ARRAY.has(field.dataTypeID)) {
      field.dataTypeID = TEXT_ARRAY;
      for (const row of result.rows || []) {
        if (Array.isArray(row) && typeof row[index] === 'string') row[index] = parseTextArray(row[index]);
      }
    }
  });
  return result;
}

// Every pooled connection, so queries inside transactions are covered too.
function retypeOnConnect(pool) {
  pool.on('connect', (client) => {
    const query = client.query.bind(client);
    client.query = (...args) => {
      const last = args[args.length - 1];
      if (typeof last === 'function') {
        args[args.length - 1] = (error, result) => last(error, error ? result : retypeCatalogColumns(result));
        return query(...args);
      }
      const pending = query(...args);
      return pending && typeof pending.then === 'function' ? pending.then(retypeCatalogColumns) : pending;
    };
  });
}

async function loadEngine() {
  const bg = await import('@prisma/query-engine-wasm/postgresql/query_engine_bg.js');
  const wasmPath = require.resolve('@prisma/query-engine-wasm/postgresql/query_engine_bg.wasm');
  const { instance } = await WebAssembly.instantiate(fs.readFileSync(wasmPath), {
    './query_engine_bg.js': bg,
  });
  bg.__wbg_set_wasm(instance.exports);
  return bg.QueryEngine;
}

async function main() {
  const port = Number(argValue('-p') || argValue('--port') || 0);
  const datamodel = fs.readFileSync(process.env.PRISMA_DML_PATH, 'utf8');
  MODELS = schemaFields(datamodel);
  const { Pool } = require('pg');
  const { PrismaPg } = require('@prisma/adapter-pg');
  const { bindAdapter } = require('@prisma/driver-adapter-utils');
  const { config, schema } = poolConfig(databaseUrl(datamodel));
  const pool = new Pool(config);
  retypeOnConnect(pool);
  const adapter = bindAdapter(new PrismaPg(pool, schema ? { schema } : undefined));
  const QueryEngine = await loadEngine();
  const engine = new QueryEngine(
    {
      datamodel,
      logLevel: (process.env.RUST_LOG || 'error').toLowerCase(),
      logQueries: Boolean(process.env.LOG_QUERIES),
    },
    (line) => process.stderr.write(`${line}\n`),
    adapter,
  );
  await engine.connect('{}');

  const reply = (res, status, text) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(text);
  };
  const handle = (req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', async () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const url = new URL(req.url, 'http://engine');
      try {
        if (req.method === 'GET' && url.pathname === '/status') return reply(res, 200, '{"status":"ok"}');
        if (req.method === 'GET' && url.pathname === '/metrics') {
          // the wasm engine keeps no metrics
          if (url.searchParams.get('format') === 'prometheus') return reply(res, 200, '');
          return reply(res, 200, '{"counters":[],"gauges":[],"histograms":[]}');
        }
        if (req.method === 'POST' && url.pathname === '/') {
          const request = translateRequest(JSON.parse(body));
          const txId = req.headers['x-transaction-id'] || undefined;
          const text = await engine.query(JSON.stringify(request), '{}', txId);
          return reply(res, 200, JSON.stringify(translateResponse(text, request)));
        }
        const tx = /^\/transaction\/(?:start|([^/]+)\/(commit|rollback))$/.exec(url.pathname);
        if (req.method === 'POST' && tx) {
          let text;
          if (!tx[1]) text = await engine.startTransaction(body || '{}', '{}');
          else if (tx[2] === 'commit') text = await engine.commitTransaction(tx[1], '{}');
          else text = await engine.rollbackTransaction(tx[1], '{}');
          const parsed = JSON.parse(text || '{}');
          return reply(res, parsed.errors || parsed.error_code ? 400 : 200, text || '{}');
        }
        return reply(res, 404, '{"errors":[{"error":"not found"}]}');
      } catch (error) {
        const message = String(error && error.message ? error.message : error);
        return reply(res, 200, JSON.stringify({ errors: [{ error: message, user_facing_error: { message } }] }));
      }
    });
  };
  // prisma-client-py connects to http://localhost:PORT, which may resolve to either loopback address.
  const servers = ['127.0.0.1', '::1'].map((host) => {
    const server = http.createServer(handle);
    server.keepAliveTimeout = 65_000;
    server.on('error', (error) => {
      if (host === '127.0.0.1') throw error; // no IPv6 loopback is fine
    });
    server.listen(port, host);
    return server;
  });

  const stop = async () => {
    for (const server of servers) server.close();
    try {
      await engine.disconnect('{}');
      await pool.end();
    } finally {
      process.exit(0);
    }
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

if (require.main === module) {
  main().catch((error) => {
    process.stderr.write(`query-engine (wasm): ${error && error.stack ? error.stack : error}\n`);
    process.exit(1);
  });
} else {
  // for the installer's self-check
  module.exports = { graphqlToJson, schemaFields, translateResponse, useModels: (models) => (MODELS = models) };
}
JS
sed -i "s/@CLIENT_ENGINE_COMMIT@/$PRISMA_CLI_ENGINE_COMMIT/" "$ENGINES/query-engine"
chmod +x "$ENGINES/schema-engine" "$ENGINES/query-engine"

# What bench/litellm_proxy.py sets when it runs the proxy, too.
export PRISMA_BINARY_CACHE_DIR="$ENGINES"
export PRISMA_QUERY_ENGINE_BINARY="$ENGINES/query-engine"
export PRISMA_SCHEMA_ENGINE_BINARY="$ENGINES/schema-engine"
export PRISMA_HIDE_UPDATE_MESSAGE=1 CHECKPOINT_DISABLE=1 PRISMA_USE_NODEJS_BIN=false

# Generate Prisma Client Python from LiteLLM's schema (LiteLLM's Docker image does this at build time).
# The generator runs as `prisma-client-py`, so the venv's bin must come first on PATH.
(cd "$site_packages/litellm/proxy" && PATH="$VENV/bin:$PATH" "$PY" -m prisma generate --schema schema.prisma >/dev/null)

# Fail here, not at the first proxy start, if the install is unusable.
"$PY" - "$ENGINES/query-engine" <<'PY'
import importlib.metadata as md
import sys
from prisma import Prisma  # noqa: F401  (fails if `prisma generate` did not run)
from prisma.client import BINARY_PATHS
assert all(path == sys.argv[1] for path in BINARY_PATHS.query_engine.values()), BINARY_PATHS.query_engine
print(f"litellm {md.version('litellm')}, prisma {md.version('prisma')}, uvicorn {md.version('uvicorn')}")
PY
(cd "$ENGINES" && node - "$site_packages/litellm/proxy/schema.prisma" <<'NODE'
// The stand-in must tag a Json field's value and leave a String[] field alone.
const fs = require('node:fs');
const engine = require('./query-engine');
engine.useModels(engine.schemaFields(fs.readFileSync(process.argv[2], 'utf8')));
const query = engine.graphqlToJson(
  'mutation { result: createOneLiteLLM_VerificationToken(data: { token: "t" metadata: "{}" models: ["m"] })' +
    ' { token } }',
);
const data = query.query.arguments.data;
if (query.action !== 'createOne' || data.metadata.$type !== 'Json' || data.models[0] !== 'm') {
  throw new Error(`unexpected translation: ${JSON.stringify(query)}`);
}
NODE
)
echo "query engine stand-in: $("$ENGINES/query-engine" --version) (wasm)"

echo "$STAMP_KEY" >"$STAMP"
echo "LiteLLM $LITELLM_VERSION installed in $VENV in $((SECONDS - started)) s ($(du -sh "$VENV" | cut -f1))"
