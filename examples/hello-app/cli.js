#!/usr/bin/env node
import { ago } from './index.js';

console.log(`hello-app: built ${ago(Number(process.argv[2] ?? 90_000))}`);
