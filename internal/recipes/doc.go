// Package recipes runs the docs' recipes (docs/*.md and the scripts under
// docs/recipes/) against real servers: the local PostgreSQL and RabbitMQ of
// internal/testenv, an in-process relay, and the recipe's own Python
// programs under Debian's /usr/bin/python3. A recipe whose test passes does
// what its page says, with the library versions the test ran.
//
// The package has tests only.
package recipes
