#!/usr/bin/env node
// The `miniss` command. A committed file rather than the built ./dist/cli.js itself: npm links a
// workspace's bins at install time, before the build has made dist/cli.js on a fresh clone (it then
// leaves the link out), and tsc writes its output without the executable bit.
import '../dist/cli.js';
