(module (func (export "noop")))
