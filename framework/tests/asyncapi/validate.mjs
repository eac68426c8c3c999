// Parses each AsyncAPI document named on the command line with the official AsyncAPI parser
// (@asyncapi/parser, with the official Avro schema parser) and fails on any error diagnostic. Warnings are printed, not fatal.
// Installed with its dependencies by scripts/asyncapi-setup; run by
// examples/signup/tests/contract.rs:
//   node validate.mjs user-service.json email-service.json ...
import { readFile } from 'node:fs/promises';
import { Parser } from '@asyncapi/parser';
import { AvroSchemaParser } from '@asyncapi/avro-schema-parser';

const SEVERITY = ['error', 'warning', 'info', 'hint'];
// Avro payloads (schemaFormat application/vnd.apache.avro+json) are parsed and checked too.
const parser = new Parser({ schemaParsers: [AvroSchemaParser()] });
let failed = 0;

for (const file of process.argv.slice(2)) {
  let text;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    console.log(`${file}: cannot read: ${e.message}`);
    failed += 1;
    continue;
  }
  const { document, diagnostics } = await parser.parse(text, { source: file });
  const errors = diagnostics.filter((d) => d.severity === 0);
  for (const d of diagnostics) {
    if (d.severity <= 1) {
      const where = d.path && d.path.length ? ` at /${d.path.join('/')}` : '';
      console.log(`${file}: ${SEVERITY[d.severity]} ${d.code}${where}: ${d.message}`);
    }
  }
  if (errors.length > 0 || document === undefined) {
    console.log(`${file}: INVALID (${errors.length} error(s))`);
    failed += 1;
  } else {
    const version = document.version();
    const channels = document.channels().length;
    const operations = document.operations().length;
    const messages = document.messages().length;
    console.log(`${file}: valid AsyncAPI ${version}: ${channels} channel(s), ${operations} operation(s), ${messages} message(s)`);
  }
}
process.exit(failed > 0 ? 1 : 0);
