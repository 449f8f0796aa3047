// The page imports the client's one-file browser build, which the api serves next to these modules
// (routes/dashboard.ts); its types are the package's own.
export * from '@taskbox/client';
