import { killLeftovers } from './helpers/services';

/** Servers that keep this process alive (the test proxy, an api under test), as Node counts its resources. */
const listening = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPServerWrap').length;

let listeningBefore = 0;
beforeAll(() => {
  listeningBefore = listening();
});

// After each test file: nothing it started may still run. A service or a server left running would hold
// its database and queues, and keep jest from exiting (CI then times out with every test passed).
afterAll(async () => {
  const left = await killLeftovers();
  if (left.length > 0) throw new Error(`this test file left services running: ${left.join(', ')}`);
  // A server closing releases its handle once its last connection is gone: give that a moment.
  const deadline = Date.now() + 2000;
  while (listening() > listeningBefore && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const servers = listening() - listeningBefore;
  if (servers > 0) throw new Error(`this test file left ${servers} server(s) listening`);
});
