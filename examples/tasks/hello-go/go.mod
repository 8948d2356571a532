module wasmos.example/hello-go

go 1.23
