"""The IR: primitive ops, hash-consed nodes, shape rules, checked builders and autodiff."""
