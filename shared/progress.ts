// Progress of long work (downloads, graph builds, long prefills) for the person watching:
// silent for the first couple of seconds (quick work prints nothing), then a bar redrawn in
// place on a terminal, or one line every few seconds when the output is a file or a pipe (a
// log should not fill with carriage returns). The last figure is always printed when it ends.

export interface ProgressSink {
  write(chunk: string): unknown;
  readonly isTTY?: boolean;
  readonly columns?: number;
}

export interface ProgressOptions {
  /** What is being done ("downloading model.safetensors"). */
  readonly label: string;
  /** Units of work in all (bytes, tokens). */
  readonly total: number;
  readonly unit?: 'bytes' | 'tokens';
  readonly sink?: ProgressSink;
  /** Nothing is shown for work done within this long. */
  readonly quietMs?: number;
  /** Between lines when the sink is not a terminal. */
  readonly lineEveryMs?: number;
  /** Clock, for tests. */
  readonly now?: () => number;
}

export interface Progress {
  /** Work done so far (absolute, not an increment). */
  update(done: number): void;
  /** The work ended (successfully or not): a final line if anything was shown. */
  finish(): void;
}

const MB = 1e6;

function amount(n: number, unit: 'bytes' | 'tokens'): string {
  if (unit === 'tokens') return `${Math.round(n).toLocaleString('en-US')} tokens`;
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / MB).toFixed(1)} MB`;
}

function rate(perSecond: number, unit: 'bytes' | 'tokens'): string {
  return unit === 'tokens' ? `${Math.round(perSecond).toLocaleString('en-US')} tok/s` : `${(perSecond / MB).toFixed(1)} MB/s`;
}

export function startProgress(options: ProgressOptions): Progress {
  const sink = options.sink ?? process.stderr;
  const unit = options.unit ?? 'bytes';
  const now = options.now ?? (() => performance.now());
  const quietMs = options.quietMs ?? 2000;
  const lineEveryMs = options.lineEveryMs ?? 5000;
  const started = now();
  const total = Math.max(options.total, 0);
  let done = 0;
  let shown = false;
  let lastDraw = -Infinity;
  let finished = false;

  const text = () => {
    const seconds = Math.max((now() - started) / 1000, 1e-3);
    const pct = total > 0 ? Math.min(100, (100 * done) / total) : 100;
    const eta = done > 0 && total > done ? ` ${Math.ceil(((total - done) * seconds) / done)} s left` : '';
    return { pct, tail: `${pct.toFixed(0).padStart(3)}% ${amount(done, unit)} / ${amount(total, unit)} ${rate(done / seconds, unit)}${eta}` };
  };

  const draw = (final: boolean) => {
    const { pct, tail } = text();
    if (sink.isTTY) {
      const width = Math.max(10, Math.min(30, (sink.columns ?? 80) - options.label.length - tail.length - 6));
      const filled = Math.round((pct / 100) * width);
      sink.write(`\r${options.label} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${tail}\x1b[K${final ? '\n' : ''}`);
    } else {
      sink.write(`${options.label}: ${tail}\n`);
    }
  };

  return {
    update(value: number) {
      if (finished) return;
      done = value;
      const t = now();
      if (t - started < quietMs) return;
      const every = sink.isTTY ? 100 : lineEveryMs;
      if (!shown || t - lastDraw >= every) {
        shown = true;
        lastDraw = t;
        draw(false);
      }
    },
    finish() {
      if (finished) return;
      finished = true;
      if (shown) draw(true);
    },
  };
}
