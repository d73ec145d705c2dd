/** A loopback TCP proxy that paces the client-to-server direction at `bytesPerSecond` (a slow link). */
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';

export class ThrottleProxy {
  private constructor(
    private readonly server: Server,
    private readonly sockets: Set<Socket>,
    readonly port: number,
  ) {}

  static async start(targetPort: number, bytesPerSecond: number): Promise<ThrottleProxy> {
    const sockets = new Set<Socket>();
    const server = createServer((client) => {
      const upstream = connect(targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => {
          sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      upstream.on('data', (d) => client.write(d));
      client.on('data', (d: Buffer) => {
        client.pause();
        upstream.write(d);
        setTimeout(() => client.resume(), (d.length / bytesPerSecond) * 1000);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return new ThrottleProxy(server, sockets, (server.address() as AddressInfo).port);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }
}
