// What the CLI's commands write to, and the error that means "bad arguments" (exit code 2).
export class UsageError extends Error {
  override name = 'UsageError';
}

export interface Out {
  line(text: string): void;
  /** Raw bytes to stdout (an export to `-`). */
  bytes(data: Uint8Array): void;
  /** Text without a newline (streamed tokens). */
  text(text: string): void;
  /** A note for the person (stderr), kept out of what scripts read. */
  note(text: string): void;
}

export function outOf(stdout: NodeJS.WritableStream, stderr: NodeJS.WritableStream): Out {
  return {
    line: (t) => void stdout.write(`${t}\n`),
    bytes: (d) => void stdout.write(d),
    text: (t) => void stdout.write(t),
    note: (t) => void stderr.write(`${t}\n`),
  };
}
