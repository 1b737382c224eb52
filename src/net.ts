import type { Server } from 'node:http'

/** Binds a server and returns the port it got (port 0 picks a free one). */
export async function listen(server: Server, host: string, port: number): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen({ host, port }, () => {
      server.off('error', reject)
      resolve()
    })
  })
  const addr = server.address()
  return typeof addr === 'object' && addr !== null ? addr.port : port
}

/** Closes a server and every connection it still has. */
export async function closeServer(server: Server): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()))
  server.closeAllConnections()
  await closed
}
