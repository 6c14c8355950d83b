'use strict'

// `pixstore/types` holds types only.
module.exports = {}
