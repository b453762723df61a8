// Builds the dashboard into ../dist: index.html, app.js and app.css, each name fixed so
// that the service can embed the directory as it is. Run by the Makefile (npm run build).
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

const out = new URL("../dist/", import.meta.url).pathname;
await mkdir(out, { recursive: true });
for (const f of ["index.html", "app.js", "app.css"]) {
  await rm(out + f, { force: true });
}
await build({
  entryPoints: { app: "src/main.jsx" },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2022"],
  jsx: "automatic",
  jsxImportSource: "preact",
  outdir: out,
  legalComments: "linked",
  logLevel: "warning",
});
await copyFile("src/index.html", out + "index.html");
