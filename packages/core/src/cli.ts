#!/usr/bin/env node
// The `miniss` command of @miniss/core. See doctor.ts.
import { doctor, formatDoctor } from './doctor.js';

function main(argv: string[]): number {
  const [cmd, ...rest] = argv;
  if (cmd === 'doctor') {
    const report = doctor();
    if (rest.includes('--json')) console.log(JSON.stringify(report, null, 2));
    else console.log(formatDoctor(report));
    return report.autoPick ? 0 : 1;
  }
  console.error(`usage: miniss doctor [--json]\n  doctor   show which I/O backends work here, why the others do not, and what auto picks`);
  return cmd === undefined || cmd === '--help' || cmd === '-h' ? 0 : 2;
}

process.exitCode = main(process.argv.slice(2));
