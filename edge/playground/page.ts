// The playground: one self-contained page (HTML, CSS and a small script, no build step, no
// external assets) that the edge serves at `/` when PLAYGROUND is on. It is a client of the
// public API like any other: sessions, a chat whose replies stream in (the native turn's SSE),
// the session's versions as a tree with fork, export and import of `.mstate`, and cartridges.
// Kept as a TypeScript string so the Lambda bundle carries it with no file to find at run time.
// edge/playground.browser.test.ts drives it in a real headless Chromium.

const STYLE = `
:root { --fg:#1d1f23; --muted:#6b7280; --line:#e5e7eb; --accent:#0f766e; --bg:#fafafa; --me:#e0f2f1; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, Segoe UI, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; gap: 12px; align-items: center; padding: 10px 16px; border-bottom: 1px solid var(--line); background: #fff; }
header h1 { font-size: 16px; margin: 0; }
header .model { color: var(--muted); }
header label { margin-left: auto; color: var(--muted); }
main { display: grid; grid-template-columns: 260px 1fr 320px; height: calc(100vh - 49px); }
section { overflow: auto; padding: 12px; border-right: 1px solid var(--line); }
section:last-child { border-right: 0; }
h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); margin: 12px 0 6px; }
h2#title { text-transform: none; letter-spacing: 0; font-size: 15px; color: var(--fg); }
button { font: inherit; border: 1px solid var(--line); background: #fff; border-radius: 6px; padding: 4px 10px; cursor: pointer; }
button.primary { background: var(--accent); color: #fff; border-color: var(--accent); }
button:disabled { opacity: .5; cursor: default; }
input, textarea { font: inherit; border: 1px solid var(--line); border-radius: 6px; padding: 6px 8px; width: 100%; }
ul { list-style: none; margin: 0; padding: 0; }
li.session { padding: 6px 8px; border-radius: 6px; cursor: pointer; }
li.session:hover { background: #f0f0f0; }
li.session.active { background: var(--me); }
li.session small, .version small { color: var(--muted); display: block; }
#chat { display: flex; flex-direction: column; }
#messages { flex: 1; overflow: auto; padding: 4px; }
.msg { margin: 6px 0; padding: 8px 10px; border-radius: 8px; max-width: 80%; white-space: pre-wrap; }
.msg.user { background: var(--me); margin-left: auto; }
.msg.assistant { background: #fff; border: 1px solid var(--line); }
.meta { color: var(--muted); font-size: 12px; margin: 2px 0 8px; }
#composer { display: flex; gap: 8px; padding-top: 8px; }
.version { padding: 4px 6px; border-left: 2px solid var(--line); margin: 2px 0; display: flex; align-items: center; gap: 6px; }
.version.head { border-left-color: var(--accent); }
.version span { flex: 1; }
.error { color: #b91c1c; white-space: pre-wrap; }
.row { display: flex; gap: 6px; margin: 6px 0; }
.cartridge small { color: var(--muted); }
`;

const SCRIPT = `
const $ = (s) => document.querySelector(s);
const state = { session: null, key: localStorage.getItem('mamba-serve-key') || '' };

function say(text) { $('#status').textContent = text; }
function fail(e) { $('#error').textContent = e && e.message ? e.message : String(e); }
function clearError() { $('#error').textContent = ''; }
const fmt = (n) => Number(n).toLocaleString('en-US');
const kb = (b) => (b >= 1e6 ? (b / 1e6).toFixed(1) + ' MB' : (b / 1e3).toFixed(1) + ' KB');

async function api(method, path, body, raw) {
  const headers = {};
  if (state.key) headers.authorization = 'Bearer ' + state.key;
  if (body !== undefined && !raw) headers['content-type'] = 'application/json';
  if (raw) headers['content-type'] = 'application/octet-stream';
  const res = await fetch(path, { method, headers, body: raw ? body : body === undefined ? undefined : JSON.stringify(body) });
  if (res.status === 401) { $('#key-box').hidden = false; throw new Error('this server needs an API key: enter it above'); }
  if (!res.ok) {
    let msg = res.status + ' ' + res.statusText;
    try { const j = await res.json(); if (j.error) msg = j.error.code + ': ' + j.error.message; } catch {}
    throw new Error(msg);
  }
  return res;
}
const getJson = async (path) => (await api('GET', path)).json();
const postJson = async (path, body) => (await api('POST', path, body)).json();

async function loadModels() {
  try {
    const m = await getJson('/v1/models');
    $('#model').textContent = m.data.map((x) => x.id + (x.sliding_window ? ' (hybrid, W ' + x.sliding_window + ')' : '') + ' · ' + kb(x.state_bytes || 0) + ' per session').join(', ');
  } catch (e) { fail(e); }
}

async function loadSessions() {
  const list = await getJson('/v1/sessions?limit=100');
  const ul = $('#sessions');
  ul.replaceChildren();
  for (const s of list.data) {
    const li = document.createElement('li');
    li.className = 'session' + (s.id === state.session ? ' active' : '');
    li.dataset.id = s.id;
    li.innerHTML = '<b></b><small></small>';
    li.querySelector('b').textContent = s.id;
    li.querySelector('small').textContent = 'v' + s.version + ' · ' + fmt(s.tokens_absorbed) + ' tokens · ' + kb(s.state_bytes);
    li.onclick = () => openSession(s.id);
    ul.append(li);
  }
}

function addMessage(role, text) {
  const div = document.createElement('div');
  div.className = 'msg ' + role;
  div.textContent = text;
  $('#messages').append(div);
  $('#messages').scrollTop = $('#messages').scrollHeight;
  return div;
}

async function loadHistory(id) {
  $('#messages').replaceChildren();
  try {
    const items = await getJson('/v1/conversations/' + encodeURIComponent(id) + '/items?order=asc&limit=100');
    for (const it of items.data) {
      if (it.type !== 'message') continue;
      addMessage(it.role === 'assistant' ? 'assistant' : 'user', it.content.map((p) => p.text || '').join(''));
    }
  } catch { /* a session with no stored items yet */ }
}

async function loadVersions(id) {
  const list = await getJson('/v1/sessions/' + encodeURIComponent(id) + '/versions?limit=1000');
  const byParent = new Map();
  const known = new Set(list.data.map((v) => v.version));
  for (const v of list.data) {
    const p = v.parent !== null && known.has(v.parent) ? v.parent : null;
    byParent.set(p, [...(byParent.get(p) || []), v]);
  }
  const box = $('#versions');
  box.replaceChildren();
  const walk = (parent, depth) => {
    for (const v of byParent.get(parent) || []) {
      const row = document.createElement('div');
      row.className = 'version' + (v.version === list.head ? ' head' : '');
      row.dataset.version = String(v.version);
      row.style.marginLeft = depth * 14 + 'px';
      row.innerHTML = '<span><b></b><small></small></span>';
      row.querySelector('b').textContent = 'v' + v.version + (v.version === list.head ? ' (head)' : '') + ' · ' + v.origin;
      row.querySelector('small').textContent = fmt(v.tokens_absorbed) + ' tokens · ' + kb(v.state_bytes);
      const fork = document.createElement('button');
      fork.textContent = 'fork';
      fork.title = 'a new session starting from this version';
      fork.onclick = () => forkAt(v.version);
      const save = document.createElement('button');
      save.textContent = 'export';
      save.disabled = v.state_bytes === 0;
      save.onclick = () => exportVersion(v.version);
      row.append(fork, save);
      box.append(row);
      walk(v.version, depth + 1);
    }
  };
  walk(null, 0);
}

async function openSession(id) {
  clearError();
  state.session = id;
  $('#title').textContent = id;
  $('#send').disabled = false;
  await Promise.all([loadHistory(id), loadVersions(id), loadSessions()]);
}

async function newSession(extra) {
  clearError();
  try {
    const s = await postJson('/v1/sessions', extra || {});
    await openSession(s.id);
  } catch (e) { fail(e); }
}

async function forkAt(version) {
  clearError();
  try {
    const s = await postJson('/v1/sessions/' + encodeURIComponent(state.session) + '/fork', { version });
    say('forked v' + version + ' into ' + s.id);
    await openSession(s.id);
  } catch (e) { fail(e); }
}

async function exportVersion(version) {
  clearError();
  try {
    const res = await api('GET', '/v1/sessions/' + encodeURIComponent(state.session) + '/state?version=' + version);
    const url = URL.createObjectURL(await res.blob());
    const a = document.createElement('a');
    a.href = url;
    a.download = state.session + '-v' + version + '.mstate';
    document.body.append(a);
    a.click();
    a.remove();
    URL.revokeObjectURL(url);
  } catch (e) { fail(e); }
}

async function importFile(file) {
  clearError();
  try {
    const s = await postJson('/v1/sessions', { metadata: { imported_from: file.name.slice(0, 500) } });
    await api('PUT', '/v1/sessions/' + encodeURIComponent(s.id) + '/state', new Uint8Array(await file.arrayBuffer()), true);
    say('imported ' + file.name + ' into ' + s.id);
    await openSession(s.id);
  } catch (e) { fail(e); }
}

async function send() {
  const text = $('#input').value.trim();
  if (!text || !state.session) return;
  clearError();
  $('#input').value = '';
  $('#send').disabled = true;
  addMessage('user', text);
  const reply = addMessage('assistant', '');
  try {
    const res = await api('POST', '/v1/sessions/' + encodeURIComponent(state.session) + '/turns', { input: text, stream: true, max_tokens: Number($('#max-tokens').value) || 128, temperature: 0, on_busy: 'queue' });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\\n\\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = 'message';
        let data = '';
        for (const line of block.split('\\n')) {
          if (line.startsWith('event:')) event = line.slice(6).trim();
          else if (line.startsWith('data:')) data += line.slice(5).replace(/^ /, '');
        }
        if (!data) continue;
        const payload = JSON.parse(data);
        if (event === 'token') { reply.textContent += payload.text; $('#messages').scrollTop = $('#messages').scrollHeight; }
        else if (event === 'done') {
          const meta = document.createElement('div');
          meta.className = 'meta';
          meta.textContent = 'v' + payload.version + ' · ' + payload.usage.output_tokens + ' tokens out · ' + fmt(payload.usage.cached_tokens) + ' reused from the stored state';
          reply.after(meta);
        } else if (event === 'error') throw new Error(payload.error.code + ': ' + payload.error.message);
      }
    }
    await Promise.all([loadVersions(state.session), loadSessions()]);
  } catch (e) { fail(e); }
  $('#send').disabled = false;
  $('#input').focus();
}

async function loadCartridges() {
  try {
    const list = await getJson('/v1/cartridges?limit=50');
    const ul = $('#cartridges');
    ul.replaceChildren();
    for (const c of list.data) {
      const li = document.createElement('li');
      li.className = 'cartridge';
      const total = c.progress.tokens_total;
      li.innerHTML = '<div><b></b> <small></small></div>';
      li.querySelector('b').textContent = c.name || c.id;
      li.querySelector('small').textContent = c.status + (total ? ' · ' + fmt(c.progress.tokens_absorbed) + ' / ' + fmt(total) + ' tokens' : '');
      if (c.status === 'ready') {
        const start = document.createElement('button');
        start.textContent = 'new session from it';
        start.onclick = () => newSession({ cartridge: c.id });
        li.append(start);
      }
      ul.append(li);
    }
    if (list.data.some((c) => c.status === 'queued' || c.status === 'building')) setTimeout(loadCartridges, 1000);
  } catch (e) { fail(e); }
}

async function buildCartridge() {
  const text = $('#cartridge-text').value.trim();
  if (!text) return;
  clearError();
  try {
    await postJson('/v1/cartridges', { name: $('#cartridge-name').value.trim() || undefined, text });
    $('#cartridge-text').value = '';
    $('#cartridge-name').value = '';
    await loadCartridges();
  } catch (e) { fail(e); }
}

$('#new').onclick = () => newSession();
$('#send').onclick = send;
$('#input').addEventListener('keydown', (e) => { if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); send(); } });
$('#import-button').onclick = () => $('#import').click();
$('#import').onchange = (e) => { const f = e.target.files[0]; if (f) importFile(f); e.target.value = ''; };
$('#build').onclick = buildCartridge;
$('#key').value = state.key;
$('#key').onchange = () => { state.key = $('#key').value.trim(); localStorage.setItem('mamba-serve-key', state.key); boot(); };

async function boot() {
  clearError();
  try {
    await loadModels();
    await loadSessions();
    await loadCartridges();
    say('ready');
  } catch (e) { fail(e); }
}
boot();
`;

/** sha256 of the inline script, for the page's Content-Security-Policy (no other script may run). */
export const PLAYGROUND_SCRIPT = SCRIPT;

export const PLAYGROUND_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mamba-serve playground</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<header>
  <h1>mamba-serve</h1><span class="model" id="model"></span><span class="model" id="status"></span>
  <label id="key-box" hidden>API key <input id="key" type="password" autocomplete="off" style="width:200px"></label>
</header>
<main>
  <section>
    <div class="row"><button class="primary" id="new">New session</button>
      <button type="button" id="import-button">Import .mstate</button><input id="import" type="file" accept=".mstate" hidden></div>
    <h2>Sessions</h2>
    <ul id="sessions"></ul>
    <h2>Cartridges</h2>
    <ul id="cartridges"></ul>
    <input id="cartridge-name" placeholder="name (optional)">
    <textarea id="cartridge-text" rows="3" placeholder="text to build a cartridge from"></textarea>
    <div class="row"><button id="build">Build cartridge</button></div>
  </section>
  <section id="chat">
    <h2 id="title">no session open</h2>
    <div id="messages"></div>
    <div class="error" id="error"></div>
    <div id="composer">
      <input id="input" placeholder="Say something; Enter sends" autocomplete="off">
      <input id="max-tokens" type="number" value="64" min="1" style="width:80px" title="max tokens">
      <button class="primary" id="send" disabled>Send</button>
    </div>
  </section>
  <section>
    <h2>Versions</h2>
    <div id="versions"></div>
  </section>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;
