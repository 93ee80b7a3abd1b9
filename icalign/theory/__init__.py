"""Layer 2b: the theory as code. Closed-form gradient learners on the linear policy
(:mod:`~icalign.theory.gd`), hand-built transformer weights whose forward pass is a gradient
step (:mod:`~icalign.theory.construct`), the necessity study of each component
(:mod:`~icalign.theory.necessity`) and the numerical verification of every claim
(:mod:`~icalign.theory.verify`)."""
