// A deadline on every call of a state store that cannot cancel its own operations (the
// filesystem store: a hung network filesystem blocks a read or an fsync indefinitely). The
// S3 store needs no wrapper: it aborts each HTTP request itself at the same deadline.
import { withDeadline, type ListedPage, type StateStore, type StoredObject } from './state-store.ts';

export class DeadlineStateStore implements StateStore {
  readonly description: string;

  constructor(
    private readonly inner: StateStore,
    private readonly timeoutMs: number,
  ) {
    this.description = inner.description;
  }

  get(key: string): Promise<StoredObject | null> {
    return withDeadline(this.timeoutMs, `get ${key}`, () => this.inner.get(key));
  }
  putIfAbsent(key: string, bytes: Uint8Array): Promise<string> {
    return withDeadline(this.timeoutMs, `put ${key}`, () => this.inner.putIfAbsent(key, bytes));
  }
  putIfMatch(key: string, bytes: Uint8Array, etag: string): Promise<string> {
    return withDeadline(this.timeoutMs, `put ${key}`, () => this.inner.putIfMatch(key, bytes, etag));
  }
  delete(keys: readonly string[]): Promise<void> {
    return withDeadline(this.timeoutMs, 'delete', () => this.inner.delete(keys));
  }
  list(prefix: string): Promise<string[]> {
    return withDeadline(this.timeoutMs, `list ${prefix}`, () => this.inner.list(prefix));
  }
  listPage(prefix: string, options: { startAfter?: string | undefined; limit: number }): Promise<ListedPage> {
    return withDeadline(this.timeoutMs, `list ${prefix}`, () => this.inner.listPage(prefix, options));
  }
  markSuperseded(key: string): Promise<void> {
    return withDeadline(this.timeoutMs, `tag ${key}`, () => this.inner.markSuperseded(key));
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
