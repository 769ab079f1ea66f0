// A TCP forwarder in front of a real server, for the one fault the server cannot produce on
// demand while keeping its data: refusing connections (moto keeps its objects in memory, so
// stopping it would lose the store). `refuse()` closes the listening socket and every open
// connection (clients get ECONNREFUSED / ECONNRESET), `accept()` listens again on the same port.
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface TcpProxy {
  readonly port: number;
  refuse(): Promise<void>;
  accept(): Promise<void>;
  close(): Promise<void>;
}

export async function startTcpProxy(target: { host: string; port: number }, port = 0): Promise<TcpProxy> {
  const open = new Set<Socket>();
  let server: Server | undefined;
  let bound = port;
  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const s = createServer((client) => {
        const upstream = connect(target.port, target.host);
        open.add(client).add(upstream);
        const drop = () => {
          client.destroy();
          upstream.destroy();
          open.delete(client);
          open.delete(upstream);
        };
        client.on('error', drop).on('close', drop);
        upstream.on('error', drop).on('close', drop);
        client.pipe(upstream);
        upstream.pipe(client);
      });
      s.once('error', reject);
      s.listen(bound, '127.0.0.1', () => {
        const address = s.address();
        if (typeof address === 'object' && address) bound = address.port;
        server = s;
        resolve();
      });
    });
  const stop = () =>
    new Promise<void>((resolve) => {
      for (const socket of open) socket.destroy();
      open.clear();
      if (!server) return resolve();
      server.close(() => resolve());
      server = undefined;
    });
  await listen();
  return {
    get port() {
      return bound;
    },
    refuse: stop,
    async accept() {
      if (!server) await listen();
    },
    close: stop,
  };
}
