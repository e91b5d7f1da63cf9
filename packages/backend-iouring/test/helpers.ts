// The shared backend test kit (tools/backend-testkit); kept as a module so this package's tests
// import their helpers from './helpers.js' as before.
export * from '@miniss/backend-testkit';
