// Apps get `JSONValue` (rows, keys, arguments), `JSONParser` and `CloseCode` with `import SynclineClient`.
@_exported import SynclineProtocol
