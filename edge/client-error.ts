// Requests Node's HTTP parser refuses before any route runs (a request line or headers past
// its 16 KiB, a malformed request) get the same answer Node gives — 431, 414 or 400 with
// `Connection: close` — but delivered so that a client can read it.
//
// Node's own handling writes the answer and destroys the socket at once. A client still
// uploading a body (a long URL and a multi-megabyte POST) then has unread data in flight, the
// kernel answers it with a reset, and the client sees "fetch failed" instead of the status
// (the fault suite's route fuzz found this: 7 of 10 such requests lost their answer). Here the
// answer is written and our side half-closed, and what the client still sends is read and
// dropped until it closes too, for at most DRAIN_MS, so the answer arrives in order before
// the connection ends.
import type { Server } from 'node:http';
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';

/** How long a refused client may keep sending before its connection is cut. */
export const DRAIN_MS = 5_000;

function statusOf(err: NodeJS.ErrnoException): number {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return 431;
    case 'HPE_URI_TOO_LONG':
      return 414;
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return 408;
    default:
      return 400;
  }
}

/** Install the handling on `server` (the Node edge does, edge/node.ts). */
export function answerRefusedRequests(server: Server, drainMs = DRAIN_MS): void {
  const draining = new WeakSet<Duplex>();
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    // The parser may complain again about what arrives while draining: the answer is sent.
    if (draining.has(socket)) return;
    // A reset, or a response already under way on this (keep-alive) connection, which a status
    // line written now would corrupt: cut the connection, as Node itself does (its own handler
    // checks the same two internal fields).
    const inFlight = (socket as Duplex & { _httpMessage?: { _headerSent?: boolean } })._httpMessage;
    if (err.code === 'ECONNRESET' || !socket.writable || inFlight?._headerSent) {
      socket.destroy();
      return;
    }
    draining.add(socket);
    const status = statusOf(err);
    socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    socket.on('data', () => {}); // read and drop the rest of the upload
    socket.on('error', () => socket.destroy());
    socket.on('end', () => socket.destroy());
    const cut = setTimeout(() => socket.destroy(), drainMs).unref();
    socket.once('close', () => clearTimeout(cut));
  });
}
