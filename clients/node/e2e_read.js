// End-to-end test, reader side: node e2e_read.js ADDRESS VERSION_HEX
// Reads the document the Python client wrote on another node, waiting (GetRequest.after) until
// this node has applied that version, and checks the converged value.
'use strict';
const assert = require('assert');
const {connect, call, toJs} = require('./client');

async function main() {
  const [address, versionHex] = process.argv.slice(2);
  const {documents} = connect(address);
  const response = await call(documents, 'Get',
      {collection: 'e2e', id: 'doc', after: Buffer.from(versionHex, 'hex')}, 15000);
  const doc = toJs(response.value);
  assert.strictEqual(response.found, true);
  assert.strictEqual(doc.count, 42, `count is ${doc.count}`);
  assert.strictEqual(doc.writer, 'python');
  assert.deepStrictEqual(doc.tags.sort(), [7, 'py'].sort());
  const counter = response.fields.find((f) => f.name === 'count');
  assert.strictEqual(counter.value.counter, '42', 'the typed view keeps the int64 exact');
  console.log('node reader saw', JSON.stringify(doc));
  process.exit(0);
}

main().catch((err) => {
  console.error('node reader failed:', err.message || err);
  process.exit(1);
});
