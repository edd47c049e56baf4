#!/usr/bin/env node
// The installed `iovalink` command. It lives outside dist/ so that the bin exists before the
// package is built: pnpm links bins at install time, and a workspace checkout has no dist/ yet.
// It runs the built command line; from a checkout, build first (`pnpm build`) or use
// `pnpm iovalink <command>`, which runs src/ through tsx.
import { main } from '../dist/cli.js';

await main(process.argv);
