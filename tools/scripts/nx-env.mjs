// nx must never reach for the network or a daemon here: CI and fresh machines are offline.
export const nxEnv = {
  ...process.env,
  NX_DAEMON: 'false',
  NX_NO_CLOUD: 'true',
  NX_TUI: 'false',
  NX_SKIP_NX_CACHE: process.env.NX_SKIP_NX_CACHE ?? '',
};

export function nxBin(root) {
  return `${root}/node_modules/nx/bin/nx.js`;
}
