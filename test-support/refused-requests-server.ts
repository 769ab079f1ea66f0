// A process serving plain HTTP with edge/client-error.ts's handling of refused requests, for
// edge/client-error.test.ts: the race it handles (a client still uploading when the server
// refuses its headers) shows only with the server in another process. It sends its port over
// IPC. NODE_DEFAULT=1 leaves Node's own handling, to see the failure the handler prevents.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { answerRefusedRequests } from '../edge/client-error.ts';

const server = createServer((_req, res) => res.end('ok'));
if (process.env['NODE_DEFAULT'] !== '1') answerRefusedRequests(server);
server.listen(0, '127.0.0.1', () => process.send!((server.address() as AddressInfo).port));
process.on('disconnect', () => process.exit(0));
