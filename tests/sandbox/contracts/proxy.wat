(module (func (export "noop2")))
