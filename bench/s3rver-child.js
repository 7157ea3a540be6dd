// s3rver in a process of its own for the benches (a real endpoint does not share the client's
// event loop). Prints {"port": N} once it listens; stops on SIGTERM or when its parent goes.
import S3rver from 's3rver';

const [directory, ...buckets] = process.argv.slice(2);
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: buckets.map((name) => ({ name })) });
const { port } = await server.run();
process.stdout.write(`${JSON.stringify({ port })}\n`);
const stop = async () => {
  server.httpServer?.closeAllConnections();
  await server.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('disconnect', stop);
