#!/usr/bin/env node
// The `miniss-hello-world` command. A committed file rather than the built ./dist/main.js itself: npm links a
// workspace's bins at install time, before the build has made dist/main.js on a fresh clone (it then
// leaves the link out), and tsc writes its output without the executable bit.
import '../dist/main.js';
