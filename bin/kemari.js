#!/usr/bin/env node
// The `kemari` command: see `kemari --help`.
import { main } from '../dist/src/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
