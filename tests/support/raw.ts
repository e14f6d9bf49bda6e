import net from 'node:net';

/** Writes raw bytes to the server and resolves with whatever it answers before closing. */
export function rawRequest(base: string, bytes: string): Promise<string> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname, () => socket.write(bytes));
    let out = '';
    socket.setTimeout(10_000, () => socket.destroy(new Error('raw request timed out')));
    socket.on('data', (d: Buffer) => {
      out += d.toString('latin1');
      if (out.includes('\r\n\r\n')) socket.destroy();
    });
    socket.on('close', () => resolve(out));
    socket.on('error', reject);
  });
}
