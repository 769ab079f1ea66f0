// README's shell examples as data, so a test can run them as a reader would (in the order
// written, against a fresh `npm start`) and README cannot drift from what the server does.
//
// What counts: every ```sh block that has a `curl` in it. In such a block a command is a line
// (with its `\` continuations); `VAR=…` lines set a shell variable for the commands after them;
// `# → …` lines under a command document its answer; the line `# Ctrl-C the stack, start it
// again…` is a restart of the stack; other comment lines and `npm start` are prose.

export type ReadmeStep =
  | { readonly kind: 'command'; readonly line: number; readonly command: string; readonly documented: string | undefined; readonly note: string }
  | { readonly kind: 'assign'; readonly line: number; readonly name: string; readonly value: string }
  | { readonly kind: 'restart'; readonly line: number };

/** The runnable steps of `markdown`'s shell examples, in order. */
export function readmeSteps(markdown: string): ReadmeStep[] {
  const lines = markdown.split('\n');
  const steps: ReadmeStep[] = [];
  let block: { start: number; body: string[] } | undefined;
  const flush = () => {
    if (!block || !block.body.some((l) => /\bcurl\b/.test(l))) return;
    for (let i = 0; i < block.body.length; i++) {
      const lineNo = block.start + i + 1;
      let text = block.body[i]!;
      if (/^#\s*Ctrl-C the stack, start it again/.test(text.trim())) {
        steps.push({ kind: 'restart', line: lineNo });
        continue;
      }
      if (text.trim() === '' || text.trim().startsWith('#') || /^npm start\b/.test(text.trim())) continue;
      while (text.endsWith('\\') && i + 1 < block.body.length) text = `${text.slice(0, -1).trimEnd()} ${block.body[++i]!.trim()}`;
      const assign = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(text.trim());
      if (assign) {
        steps.push({ kind: 'assign', line: lineNo, name: assign[1]!, value: assign[2]! });
        continue;
      }
      // A trailing comment is the reader's note on the command (it may say the expected status).
      const hash = text.search(/\s#\s/);
      const command = hash >= 0 ? text.slice(0, hash).trim() : text.trim();
      const note = hash >= 0 ? text.slice(hash).trim().replace(/^#\s*/, '') : '';
      let documented: string | undefined;
      const next = block.body[i + 1]?.trim();
      if (next?.startsWith('# →')) {
        documented = next.slice(3).trim();
        i++;
        while (block.body[i + 1]?.trim().startsWith('#   ') || block.body[i + 1]?.trim().startsWith('#    ')) documented += ` ${block.body[++i]!.trim().slice(1).trim()}`;
      }
      steps.push({ kind: 'command', line: lineNo, command, documented, note });
    }
  };
  lines.forEach((line, index) => {
    if (/^```sh\s*$/.test(line)) block = { start: index + 1, body: [] };
    else if (block && /^```\s*$/.test(line)) {
      flush();
      block = undefined;
    } else if (block) block.body.push(line);
  });
  return steps;
}

/** The HTTP status a README note promises for its command ("(201)", "202, queued", "409 …"); 2xx when it says none. */
export function promisedStatus(note: string, documented: string | undefined): number | undefined {
  const m = /(?:^|\(|\s)([1-5]\d\d)(?=[\s),;]|$)/.exec(`${note} ${documented ?? ''}`);
  return m ? Number(m[1]) : undefined;
}

/**
 * The keys a documented answer shows, as paths ("usage.cached_tokens"), from the JSON-ish text
 * README writes (`{"id":"alice","usage":{"input_tokens":12,…},…}`): the `…` are elisions.
 */
export function documentedKeys(documented: string): string[] {
  const keys: string[] = [];
  const stack: (string | null)[] = [];
  let pending: string | null = null;
  const re = /"([A-Za-z_][A-Za-z0-9_]*)"\s*:|[{}[\]]/g;
  for (let m = re.exec(documented); m; m = re.exec(documented)) {
    const tok = m[0];
    if (tok === '{') {
      stack.push(pending);
      pending = null;
    } else if (tok === '}') stack.pop();
    else if (tok === '[') {
      stack.push(pending === null ? null : `${pending}[]`);
      pending = null;
    } else if (tok === ']') stack.pop();
    else {
      const path = [...stack.filter((s): s is string => s !== null), m[1]!].join('.');
      keys.push(path);
      pending = m[1]!;
    }
  }
  return [...new Set(keys)];
}

/** Whether `value` has every path (arrays: their first element). */
export function hasPath(value: unknown, path: string): boolean {
  let at: unknown = value;
  for (const part of path.split('.')) {
    const array = part.endsWith('[]');
    const key = array ? part.slice(0, -2) : part;
    if (at === null || typeof at !== 'object' || !(key in (at as object))) return false;
    at = (at as Record<string, unknown>)[key];
    if (array) {
      if (!Array.isArray(at) || at.length === 0) return false;
      at = at[0];
    }
  }
  return true;
}
