'use strict'

const { PixstoreError, ERROR_CODES } = require('./errors.js')
const { getLastPixstoreError, setCustomErrorHandler } = require('./state.js')

module.exports = { getLastPixstoreError, setCustomErrorHandler, PixstoreError, ERROR_CODES }
