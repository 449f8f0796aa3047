/** Tests run against real Postgres and RabbitMQ; see test/global-setup.ts for how they are found. */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // isolatedModules: transpile only (types are checked by `npm run typecheck`), which keeps jest fast.
  transform: { '^.+\\.ts$': ['ts-jest', { isolatedModules: true, tsconfig: 'test/tsconfig.json' }] },
  moduleNameMapper: { '^@taskbox/shared$': '<rootDir>/packages/shared/src/index.ts' },
  globalSetup: '<rootDir>/test/global-setup.ts',
  globalTeardown: '<rootDir>/test/global-teardown.ts',
  testTimeout: 60_000,
};
