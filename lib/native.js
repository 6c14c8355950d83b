'use strict'

// Loads the prebuilt binary for this platform through the loader napi-rs generates, and turns
// its failure into a message that says what is missing and what to do.

const MIN_NAPI_VERSION = 6

function platformName() {
  if (process.platform !== 'linux') return `${process.platform}-${process.arch}`
  const glibc = process.report?.getReport?.().header?.glibcVersionRuntime
  return `linux-${process.arch}-${glibc ? 'gnu' : 'musl'}`
}

function load() {
  const napi = Number(process.versions.napi)
  if (!(napi >= MIN_NAPI_VERSION)) {
    throw new Error(
      `pixstore needs Node-API ${MIN_NAPI_VERSION} or later; Node ${process.version} has ` +
        `${process.versions.napi ?? 'none'}. Use Node.js 18.17 or later.`,
    )
  }
  try {
    return require('../index.js')
  } catch (cause) {
    const platform = platformName()
    throw new Error(
      `pixstore has no native binary for ${platform} (Node ${process.version}). The prebuilt ` +
        `one comes in the optional dependency pixstore-${platform}: reinstall without ` +
        `--omit=optional (and without --no-optional), or build it from source: clone the ` +
        `repository, install a Rust toolchain (rustup.rs), then run ` +
        `\`npm install && npm run build\` and depend on that folder.`,
      { cause },
    )
  }
}

module.exports = load()
