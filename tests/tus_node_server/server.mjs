// Serve a directory with @tus/server + @tus/file-store (tus-node-server) for tests/test_client.py.
//
//   node server.mjs DIR
//
// Listens on 127.0.0.1, on a free port, at /files/; prints one JSON line {"port": N} once it
// accepts connections. Stops on SIGTERM/SIGINT.
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'

const [directory] = process.argv.slice(2)
if (!directory) {
  console.error('usage: node server.mjs DIR')
  process.exit(2)
}

const server = new Server({ path: '/files', datastore: new FileStore({ directory }) })
const listener = server.listen({ host: '127.0.0.1', port: 0 }, () => {
  process.stdout.write(`${JSON.stringify({ port: listener.address().port })}\n`)
})
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => listener.close(() => process.exit(0)))
}
