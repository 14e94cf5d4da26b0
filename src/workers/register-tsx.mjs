// Preloaded into every pool worker (`execArgv: ['--import', <this file>]`) so
// that the worker can load the TypeScript task module.
//
// Why not `--import tsx`: tsx's own entry registers its loader hooks only on
// the main thread under Node 20 (it checks `isMainThread`), so a worker started
// with `--import tsx` still cannot import .ts files. Calling tsx's API from the
// worker itself does register them there. This works the same under vitest,
// under `node --import tsx` (the CLI) and under plain `node`.
import { register } from 'tsx/esm/api';

register();
