// `npm start` for a laptop: api, relay and worker as three processes, each line prefixed with its name.
// Stops all three when one exits or on Ctrl-C / SIGTERM, with one SIGTERM each: a graceful drain.
// Exits 1 when any of them did not exit 0 (one that crashed, or would not stop at the first signal).
//
// Each service runs in a process group of its own (detached), so the terminal's Ctrl-C, which goes to
// the whole foreground group, reaches only this script. Had the services received it too, the SIGTERM
// sent below would be their second signal, which means "exit now" and abandons in-flight work.
import { spawn } from 'node:child_process';
import readline from 'node:readline';

const services = ['api', 'relay', 'worker'];
// One HEALTH_PORT for two services would not bind: given one, the relay takes it and the worker the
// next (0, any free port, stays 0 for both).
const healthPort = Number(process.env.HEALTH_PORT);
if (healthPort >= 65535) {
  console.error(`HEALTH_PORT ${healthPort} leaves the worker no next port: set one below 65535`);
  process.exit(1);
}
const ownEnv = {
  api: {},
  relay: {},
  worker: healthPort > 0 ? { HEALTH_PORT: String(healthPort + 1) } : {},
};
const children = services.map((name) => {
  const child = spawn(process.execPath, [`services/${name}/dist/main.js`], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
    env: { ...process.env, ...ownEnv[name] },
  });
  for (const stream of [child.stdout, child.stderr]) {
    readline.createInterface({ input: stream }).on('line', (line) => console.log(`[${name.padEnd(6)}] ${line}`));
  }
  child.on('exit', (code, signal) => {
    console.log(`[${name.padEnd(6)}] exited (${signal ?? code})`);
    if (code !== 0) process.exitCode = 1;
    if (!stopping) onSignal();
  });
  return child;
});

// The first signal (or a service exiting) drains the rest with one SIGTERM each; a second signal kills
// what still runs, as the services themselves do.
let stopping = false;
function onSignal() {
  const signal = stopping ? 'SIGKILL' : 'SIGTERM';
  stopping = true;
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill(signal);
}
// SIGHUP too: a closed terminal would otherwise leave the detached services running on their own.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, onSignal);
process.on('exit', () => children.forEach((c) => c.exitCode === null && c.kill('SIGKILL')));
