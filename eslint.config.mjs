// ESLint as create-next-app 16 writes it (Next.js's core web vitals and TypeScript
// rules), for what an app copies or follows: static/stock-client.js, static/stock-hooks.js
// and examples/. tests/static/test_eslint.py runs it. eslint-config-next parses JavaScript with
// the Babel parser inside `next`, which is why package.json has `next` too.
import { defineConfig, globalIgnores } from "eslint/config";
import nextVitals from "eslint-config-next/core-web-vitals";
import nextTs from "eslint-config-next/typescript";

const eslintConfig = defineConfig([
  ...nextVitals,
  ...nextTs,
  // The example app's root, where @next/next's rules look for a pages/ directory.
  { settings: { next: { rootDir: "examples/nextjs/" } } },
  globalIgnores([".next/**", "out/**", "build/**", "next-env.d.ts"]),
]);

export default eslintConfig;
