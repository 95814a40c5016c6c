// node-web: a plain `http` server on the listener Aeterna passes (fd 3,
// LISTEN_FDS=1), relayed unchanged. Node's core has neither AF_UNIX datagram
// sockets nor SCM_RIGHTS, so readiness goes through `systemd-notify --ready`
// (the unit says notify_access: all, since the sender is a child) and there
// is no SRP: a Node service keeps no in-memory state across a relay.
// Works with Node.js 18 (Debian 12) and 20.
'use strict';

const http = require('http');
const { execFile } = require('child_process');

const gen = process.env.AETERNA_GENERATION || '0';
const fromAeterna = process.env.LISTEN_PID === String(process.pid) &&
  Number(process.env.LISTEN_FDS) >= 1;

const server = http.createServer((req, res) => {
  const body = `hello from node pid=${process.pid} gen=${gen}\n`;
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
});
server.keepAliveTimeout = 5000;

function notify(args, done) {
  if (!process.env.NOTIFY_SOCKET) return done && done();
  // systemd-notify waits (BARRIER=1) until the manager has read the message.
  execFile('systemd-notify', args, (err) => {
    if (err) console.error(`node-web gen=${gen}: systemd-notify ${args}: ${err.message}`);
    if (done) done();
  });
}

server.listen(fromAeterna ? { fd: 3 } : { port: Number(process.env.PORT || 8094), host: '127.0.0.1' }, () => {
  console.error(`node-web gen=${gen}: serving (node ${process.version})`);
  notify(['--ready', `--status=serving gen=${gen}`]);
});

// SIGTERM (a drain): stop accepting, finish what is in flight, close idle
// keep-alive connections, exit.
process.on('SIGTERM', () => {
  notify(['STOPPING=1']);
  server.close(() => process.exit(0));
  if (server.closeIdleConnections) server.closeIdleConnections(); // Node >= 18.2
  setTimeout(() => process.exit(0), 10000).unref();
});
