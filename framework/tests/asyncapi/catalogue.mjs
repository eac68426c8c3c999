// Renders an HTML catalogue of AsyncAPI documents with the official AsyncAPI React component
// (@asyncapi/react-component, its standalone browser bundle): one page, one section per
// document, each rendered in the browser by the component.
//   node catalogue.mjs OUT_DIR TITLE doc.json ...
// writes OUT_DIR/index.html, OUT_DIR/asyncapi.js (the bundle), OUT_DIR/asyncapi.css.
// Installed beside its node_modules by scripts/asyncapi-setup; used by
// examples/signup/tests/catalogue.rs and scripts/asyncapi-catalogue.
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const component = path.join(here, 'node_modules', '@asyncapi', 'react-component');
const [out, title, ...files] = process.argv.slice(2);
if (!out || !title || files.length === 0) {
  console.error('usage: node catalogue.mjs OUT_DIR TITLE doc.json ...');
  process.exit(2);
}

const escape = (text) =>
  text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

const docs = [];
for (const file of files) {
  const doc = JSON.parse(await readFile(file, 'utf8'));
  const name = doc.info && doc.info.title ? String(doc.info.title) : path.basename(file);
  docs.push({ id: name.replace(/[^A-Za-z0-9_-]/g, '_'), name, doc });
}

await mkdir(out, { recursive: true });
await copyFile(path.join(component, 'browser', 'standalone', 'index.js'), path.join(out, 'asyncapi.js'));
await copyFile(path.join(component, 'styles', 'default.min.css'), path.join(out, 'asyncapi.css'));

const nav = docs.map((d) => `<a href="#${d.id}">${escape(d.name)}</a>`).join(' · ');
const sections = docs
  .map((d) => `<section id="${d.id}" class="service"><div class="rendered" id="doc-${d.id}"></div></section>`)
  .join('\n');
// JSON inside a script element: no "</script>" or "<!--" may appear in it.
const data = JSON.stringify(docs.map(({ id, doc }) => ({ id, doc }))).replace(/</g, '\\u003c');

const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${escape(title)}</title>
<link rel="stylesheet" href="asyncapi.css">
<style>
  body { margin: 0; font-family: system-ui, sans-serif; }
  header.catalogue { padding: 12px 24px; background: #1f2937; color: #f9fafb; }
  header.catalogue h1 { margin: 0 0 4px 0; font-size: 20px; }
  header.catalogue a { color: #93c5fd; }
  section.service { border-top: 4px solid #1f2937; }
</style>
</head>
<body>
<header class="catalogue"><h1>${escape(title)}</h1><nav>${nav}</nav></header>
${sections}
<script src="asyncapi.js"></script>
<script>
  const docs = ${data};
  for (const { id, doc } of docs) {
    AsyncApiStandalone.render(
      { schema: doc, config: { show: { sidebar: false, errors: true } } },
      document.getElementById('doc-' + id),
    );
  }
</script>
</body>
</html>
`;
await writeFile(path.join(out, 'index.html'), html);
console.log(`${path.join(out, 'index.html')}: ${docs.length} document(s)`);
