// A Node.js inference worker written only from proto/ (docs/contract.md): the other-language half
// of tests/test_contract.py. It reads a JSON plan on stdin, runs it against a memsvc server with
// @grpc/grpc-js + @grpc/proto-loader (protobuf.js underneath) and prints one JSON object of what it
// read: rows as base64 bytes, ids as numbers, gRPC errors as their status code and message.
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const definition = protoLoader.loadSync(
  ['memsvc/v1/knowledge.proto', 'memsvc/v1/search.proto', 'memsvc/v1/mosaic.proto'],
  { includeDirs: [PROTO_ROOT], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
const v1 = grpc.loadPackageDefinition(definition).memsvc.v1;
// Full-vocabulary lookups are larger than grpc's default 4 MiB receive limit.
const OPTIONS = { 'grpc.max_receive_message_length': 256 * 1024 * 1024 };

function call(client, method, request) {
  return new Promise((resolve, reject) => client[method](request, (err, reply) => (err ? reject(err) : resolve(reply))));
}

async function attempt(client, method, request) {
  try {
    return { reply: await call(client, method, request) };
  } catch (err) {
    return { error: { code: grpc.status[err.code], details: err.details } };
  }
}

// float16 bits -> float32 value (subnormals, infinities and NaN included).
function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

// Tensor.data (little-endian, Tensor.dtype) -> Float32Array.
function toFloat32(tensor) {
  const data = tensor.data;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (tensor.dtype === 'float32') {
    return Float32Array.from({ length: data.byteLength / 4 }, (_, i) => view.getFloat32(4 * i, true));
  }
  const out = new Float32Array(data.byteLength / 2);
  const bits = new DataView(new ArrayBuffer(4));
  for (let i = 0; i < out.length; i++) {
    const h = view.getUint16(2 * i, true);
    if (tensor.dtype === 'bfloat16') {  // the upper 16 bits of a float32
      bits.setUint32(0, h << 16 >>> 0, true);
      out[i] = bits.getFloat32(0, true);
    } else if (tensor.dtype === 'float16') {
      out[i] = halfToFloat(h);
    } else {
      throw new Error(`unknown dtype ${tensor.dtype}`);
    }
  }
  return out;
}

function int64s(tensor) {
  const view = new DataView(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
  return Array.from({ length: tensor.data.byteLength / 8 }, (_, i) => Number(view.getBigInt64(8 * i, true)));
}

function float32Tensor(values) {
  const flat = values.flat(Infinity);
  const shape = Array.isArray(values[0]) ? [values.length, values[0].length] : [values.length];
  return { dtype: 'float32', shape, data: Buffer.from(Float32Array.from(flat).buffer) };
}

const b64 = (typed) => Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength).toString('base64');

// A LookupResponse -> rows in request order: the stored bytes and their float32 values.
function lookupResult(reply) {
  const shape = reply.rows.shape.map(Number);
  const rowBytes = reply.rows.data.byteLength / shape[0];
  const order = reply.rows_in_request_order ? Array.from({ length: shape[0] }, (_, i) => i) : reply.inverse;
  const stored = Buffer.concat(order.map((row) => reply.rows.data.subarray(row * rowBytes, (row + 1) * rowBytes)));
  const values = toFloat32({ dtype: reply.rows.dtype, data: stored });
  return {
    dtype: reply.rows.dtype, shape, version: Number(reply.version), unique_token_ids: reply.unique_token_ids.map(Number),
    stored: stored.toString('base64'), float32: b64(values),
  };
}

async function main() {
  const plan = JSON.parse(require('fs').readFileSync(0, 'utf8'));
  const credentials = grpc.credentials.createInsecure();
  const kb = new v1.KnowledgeService(plan.address, credentials, OPTIONS);
  const search = new v1.SearchService(plan.address, credentials, OPTIONS);
  const mosaic = new v1.MosaicService(plan.address, credentials, OPTIONS);
  const out = { tables: {}, lookups: [] };

  for (const t of (await call(kb, 'ListTables', {})).tables) {
    out.tables[t.name] = { kind: t.kind, dtype: t.dtype, vocab_size: Number(t.vocab_size), num_layers: t.num_layers, dim: t.dim };
  }
  for (const l of plan.lookups) {
    const reply = await call(kb, 'Lookup', { table: l.table, tokens: l.tokens, layers: l.layers, at: { version: l.version } });
    out.lookups.push(lookupResult(reply));
  }

  const e = plan.edit;
  const edit = await call(kb, 'Edit', {
    table: e.table, author: 'node', message: 'from node',
    ops: [{ op: 'SET', token: e.token, layers: e.layers, vector: float32Tensor(e.vector) }],
  });
  out.edit = {
    version: Number(edit.commit.version), rows_changed: Number(edit.commit.rows_changed),
    changes: edit.changes.map((c) => [c.token, Number(c.token_id), c.layer]),
  };
  out.edited = lookupResult(await call(kb, 'Lookup', { table: e.table, tokens: [e.token] }));

  const bad = { op: 'SET', token: e.token, layers: [99], vector: float32Tensor(e.vector) };
  out.errors = {
    edit_layer: (await attempt(kb, 'Edit', { table: e.table, ops: [bad] })).error,
    override_layer: (await attempt(kb, 'Lookup', { table: e.table, tokens: [e.token], overrides: [bad] })).error,
    lookup_layer: (await attempt(kb, 'Lookup', { table: e.table, tokens: [e.token], layers: [99] })).error,
  };

  const s = plan.search;
  const found = await call(search, 'Search', { table: s.table, layer: s.layer, tokens: s.tokens, k: s.k });
  out.search = {
    ids: int64s(found.ids), distances: b64(toFloat32(found.distances)), tokens: found.tokens,
    shape: found.ids.shape.map(Number), ids_dtype: found.ids.dtype, metric: found.metric, version: Number(found.version),
  };

  const m = plan.mosaic;
  const query = await call(mosaic, 'QueryMosaic', {
    table: m.table, layer: m.layer, head: m.head, queries: float32Tensor(m.queries), beta: m.beta, mode: 'EXACT',
  });
  out.mosaic = {
    outputs: b64(toFloat32(query.outputs)), lse: b64(toFloat32(query.lse)), shape: query.outputs.shape.map(Number),
    n: Number(query.n), beta: query.beta, version: Number(query.version),
  };
  for (const client of [kb, search, mosaic]) client.close();
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
