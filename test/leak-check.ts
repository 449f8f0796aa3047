import { killLeftovers } from './helpers/services';

// After each test file: nothing it started may still run. A service left running would hold its
// database and queues, and keep jest from exiting.
afterAll(async () => {
  const left = await killLeftovers();
  if (left.length > 0) throw new Error(`this test file left services running: ${left.join(', ')}`);
});
